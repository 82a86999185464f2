"""Prompts through a ComfyUI CLIP holding T5: T5 hidden states + attention mask, as the reference pipelines
prepare them (template, caption cleaning, TEXT_TOKENS tokens with EOS, padding masked). Read by the text-encode
node and the training dataset node."""
import logging

import comfy.model_management

from ..allegro import prompt as prompts
from ..allegro.config import TEXT_TOKENS
from . import checks


def t5_tokenizer_of(clip):
    """ComfyUI's T5 tokenizer inside a CLIP: `clip_t5xxl` for single-T5 types (mochi, ltxv), `t5xxl`
    inside multi-encoder tokenizers (sd3, flux)."""
    holder = getattr(clip, "tokenizer", None)
    tokenizer = getattr(holder, "clip_t5xxl", None) or getattr(holder, "t5xxl", None)
    if tokenizer is None:
        raise ValueError("Allegro needs a T5-XXL text encoder: load t5xxl_fp16.safetensors (or fp8) with the "
                         "stock 'Load CLIP' node set to type 'mochi' (or 'ltxv'), or use 'Load Allegro T5 (diffusers)'.")
    return tokenizer


LOGGED_DROPPED_CHARS = 300        # the dropped text's start and end, in the console warning


def shorten(text: str, limit: int = LOGGED_DROPPED_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit // 2]} … {text[-(limit // 2):]}"


def encode(clip, text: str, clean: bool, label: str):
    """[[hidden states [1, 512, d], {"attention_mask": [1, 512]}]] — standard CONDITIONING (512 = TEXT_TOKENS)."""
    return encode_reporting(clip, text, clean, label)[0]


def encode_reporting(clip, text: str, clean: bool, label: str):
    """(encode's CONDITIONING, whether T5's TEXT_TOKENS cut the text short)."""
    hf_tokenizer = t5_tokenizer_of(clip).tokenizer
    # Bounded work whatever the prompt's length; Cancel is honoured between the cleaning steps.
    prepared = prompts.prepare_for_t5(text, lambda s: hf_tokenizer(s, add_special_tokens=False)["input_ids"],
                                      clean=clean, max_length=TEXT_TOKENS, decode_fn=hf_tokenizer.decode,
                                      check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
    tokens = prepared.tokens
    if tokens.truncated:
        unread = (f"; the {prepared.unread_chars} characters after the first {prepared.read_chars} were not read"
                  if prepared.unread_chars else "")
        logging.warning("Allegro %s prompt: T5 reads at most %d tokens; dropped: %s%s", label, TEXT_TOKENS,
                        shorten(tokens.dropped_text or ""), unread)
    # The CLIP's own token layout (e.g. SD3's has clip_l/clip_g slots too), with our T5 ids in it.
    layout = clip.tokenize("")
    encoded = clip.encode_from_tokens({**layout, "t5xxl": [[(int(i), 1.0) for i in tokens.ids]]}, return_dict=True)
    mask = encoded.get("attention_mask")
    if mask is None:
        raise ValueError("This CLIP runs T5 without an attention mask, which Allegro was trained with: load the T5 "
                         "with 'Load CLIP' type 'mochi' or 'ltxv' (types sd3, flux and pixart return no mask).")
    states = encoded["cond"]
    if not checks.is_finite(states):
        raise ValueError(f"T5 turned the {label} prompt into {checks.count_non_finite(states)}: its weights or its "
                         "dtype (fp16 can overflow in T5-XXL). Load it in bf16 or fp32, or download it again.")
    encoder = getattr(clip, "allegro_source", None) or f"a T5 giving {states.shape[-1]}-wide states"
    return [[states, {"attention_mask": mask, "pooled_output": None, "allegro_text_encoder": encoder}]], tokens.truncated
