"""What a set of weights is: Allegro's DiT (T2V / TI2V), its VAE, T5, or another model family.

`identify_checkpoint` recognises them by tensor names (and a shape or two), so an error can say
"this is an SDXL checkpoint" instead of listing missing keys. It only looks at names and shapes, so
it also works on `read_safetensors_header` output. The config the shapes imply is `config`'s job.
"""
import re
from dataclasses import dataclass
from typing import Mapping


class CheckpointError(ValueError):
    """A weights file or folder that cannot be used; the message names it and says what to do.
    (Defined here, not in `checkpoints`, so that module can import this one without a cycle.)"""


ALLEGRO_T2V, ALLEGRO_TI2V, ALLEGRO_VAE = "allegro_t2v", "allegro_ti2v", "allegro_vae"
T5_ENCODER, UNKNOWN = "t5_encoder", "unknown"
KIND_DESCRIPTIONS = {
    ALLEGRO_T2V: "an Allegro text-to-video transformer",
    ALLEGRO_TI2V: "an Allegro-TI2V (text+image-to-video) transformer",
    ALLEGRO_VAE: "the Allegro video VAE",
    T5_ENCODER: "a T5 text encoder",
    "pixart": "a PixArt transformer (same layout as Allegro's, but it predicts variance channels too)",
    "sd1.5/sd2 unet or checkpoint": "a Stable Diffusion 1.5/2.x UNet or checkpoint",
    "sdxl": "a Stable Diffusion XL UNet or checkpoint",
    "sd3": "a Stable Diffusion 3 transformer",
    "flux": "a Flux transformer",
    "wan": "a Wan video transformer",
    "hunyuan video": "a HunyuanVideo transformer",
    "ltxv": "an LTX-Video transformer",
    "mochi": "a Mochi video transformer",
    "clip text encoder": "a CLIP text encoder",
    "image vae": "an image VAE (Stable Diffusion / SDXL / SD3 / Flux family)",
    UNKNOWN: "weights this package does not recognise",
}
# Prefixes under which whole-pipeline or ComfyUI-style files store a model's tensors.
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "vae.", "first_stage_model.",
                  "text_encoder.", "model.", "module.")
TI2V_BRANCHES = ("pos_embed_mask", "pos_embed_masked_video", "pos_embed_first_frame")
_ALLEGRO_DIT_KEYS = ("pos_embed.proj.weight", "adaln_single.linear.weight", "caption_projection.linear_1.weight",
                     "scale_shift_table", "transformer_blocks.0.attn2.to_k.weight", "proj_out.weight")


@dataclass(frozen=True)
class Identification:
    kind: str
    prefix: str = ""           # stripped from every tensor name to get the model's own names

    @property
    def description(self) -> str:
        text = KIND_DESCRIPTIONS.get(self.kind, self.kind)
        return f"{text} (tensor names prefixed with {self.prefix!r})" if self.prefix else text


# Other families: alternative sets of tensor names, any complete set identifies the family (original
# or ComfyUI naming, then diffusers'/transformers'). Checked in order; the first match wins, so a
# family whose names are a subset of another's comes after it (SD 1.5 after SDXL).
FAMILY_SIGNATURES = (
    ("clip text encoder", (("text_model.encoder.layers.0.self_attn.q_proj.weight",),
                           ("encoder.layers.0.self_attn.q_proj.weight", "embeddings.token_embedding.weight"),
                           ("transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight"))),
    ("sdxl", (("input_blocks.0.0.weight", "label_emb.0.0.weight"),
              ("add_embedding.linear_1.weight", "conv_in.weight"))),
    ("sd1.5/sd2 unet or checkpoint", (("input_blocks.0.0.weight",),
                                      ("time_embedding.linear_1.weight", "conv_in.weight"))),
    ("hunyuan video", (("txt_in.individual_token_refiner.blocks.0.norm1.weight",),
                       ("context_embedder.token_refiner.refiner_blocks.0.norm1.weight",))),
    ("flux", (("double_blocks.0.img_attn.qkv.weight",),
              ("x_embedder.weight", "single_transformer_blocks.0.attn.to_q.weight"))),
    ("pixart", (("t_block.1.weight", "x_embedder.proj.weight"),)),
    ("sd3", (("joint_blocks.0.context_block.attn.qkv.weight",),
             ("pos_embed.proj.weight", "context_embedder.weight",
              "time_text_embed.timestep_embedder.linear_1.weight"))),
    ("wan", (("patch_embedding.weight", "head.modulation"),
             ("patch_embedding.weight", "condition_embedder.time_embedder.linear_1.weight"))),
    ("mochi", (("t5_yproj.weight",), ("time_embed.pooler.to_kv.weight",))),
    ("ltxv", (("patchify_proj.weight", "adaln_single.emb.timestep_embedder.linear_1.weight"),
              ("proj_in.weight", "time_embed.emb.timestep_embedder.linear_1.weight",
               "caption_projection.linear_1.weight"))),
    ("image vae", (("encoder.down.0.block.0.conv1.weight",),
                   ("encoder.down_blocks.0.resnets.0.conv1.weight", "quant_conv.weight"))),
)
_ALLEGRO_VAE_NAMES = (re.compile(r"(encoder|decoder)\.temp_conv_in\.weight$"),
                      re.compile(r"(encoder\.down|decoder\.up)_blocks\.\d+\.temp_convs\."))
_T5_BLOCK_NAME = re.compile(r"encoder\.block\.0\.layer\.0\.SelfAttention\.")


def _classify(keys: set[str], shape) -> str:
    if all(name in keys for name in _ALLEGRO_DIT_KEYS):
        embed, out_rows = shape("pos_embed.proj.weight"), shape("proj_out.weight")[0]
        if len(embed) == 4 and out_rows == embed[1] * embed[2] * embed[3]:
            ti2v = any(k.startswith(TI2V_BRANCHES) for k in keys)
            return ALLEGRO_TI2V if ti2v else ALLEGRO_T2V
        return "pixart"      # same layout, but learned-sigma models predict twice the input channels
    if all(any(pattern.match(k) for k in keys) for pattern in _ALLEGRO_VAE_NAMES):
        return ALLEGRO_VAE
    if any(_T5_BLOCK_NAME.match(k) for k in keys) and ({"shared.weight", "encoder.embed_tokens.weight"} & keys):
        return T5_ENCODER
    for kind, alternatives in FAMILY_SIGNATURES:
        if any(all(name in keys for name in names) for names in alternatives):
            return kind
    return UNKNOWN


def identify_checkpoint(state_dict: Mapping) -> Identification:
    """The kind of model and the key prefix it is stored under. Values only need a `.shape`."""
    keys = list(state_dict)
    views = [("", set(keys))]
    prefixed = [(p, {k[len(p):] for k in keys if k.startswith(p)}) for p in KNOWN_PREFIXES]
    views += sorted((view for view in prefixed if view[1]), key=lambda view: -len(view[1]))
    for prefix, names in views:
        kind = _classify(names, lambda name, p=prefix: tuple(state_dict[p + name].shape))
        if kind != UNKNOWN:
            return Identification(kind, prefix)
    return Identification(UNKNOWN)


def identify(state_dict: Mapping) -> str:
    """One of the KIND_DESCRIPTIONS keys: "allegro_t2v", "allegro_ti2v", "allegro_vae", "t5_encoder",
    another family's name, or "unknown"."""
    return identify_checkpoint(state_dict).kind


def strip_prefix(state_dict: Mapping, prefix: str) -> dict:
    """The tensors under `prefix`, with it removed from their names (all of them if prefix is "")."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
