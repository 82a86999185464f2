"""Allegro text encode: prompt → T5 hidden states + attention mask, as the reference pipelines
prepare them (template, caption cleaning, TEXT_TOKENS tokens with EOS, padding masked)."""
from comfy_api.v0_0_2 import io

from ..allegro import prompt as prompts
from ..allegro.config import TEXT_TOKENS
from ..adapters.text_encoding import encode

CATEGORY = "Allegro/conditioning"


class AllegroTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_TextEncode",
            display_name="Allegro Text Encode",
            category=CATEGORY,
            description="Encodes the prompt and the negative prompt with T5 for Allegro: the reference positive "
                        f"template and caption cleaning (optional), {TEXT_TOKENS} tokens, padding masked.",
            inputs=[
                io.Clip.Input("clip", tooltip="T5-XXL: 'Load CLIP' (type mochi) with t5xxl_fp16.safetensors, or "
                                              "'Load Allegro T5 (diffusers)'."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True, default="",
                                tooltip="What the video shows. Long, concrete English descriptions work best; T5 reads "
                                        f"{TEXT_TOKENS} tokens at most (the rest is dropped with a warning)."),
                io.String.Input("negative_prompt", multiline=True, dynamic_prompts=True,
                                default=prompts.NEGATIVE_PROMPT.strip(),
                                tooltip="What to avoid; pre-filled with the reference scripts' negative prompt."),
                io.Boolean.Input("use_template", default=True,
                                 tooltip="Wrap the prompt in the reference scripts' quality template (the maintainers "
                                         "say it was not used in training)."),
                io.Boolean.Input("clean_caption", default=True,
                                 tooltip="Clean the text as the reference pipelines do before T5 (drops URLs, HTML, "
                                         "brackets and a few words like 'jpeg')."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The prompt's conditioning (to the sampler's "
                                                                        "positive, or the TI2V node)."),
                io.Conditioning.Output(display_name="negative", tooltip="The negative prompt's conditioning (to the "
                                                                        "sampler's negative, or the TI2V node)."),
            ],
        )

    @classmethod
    def execute(cls, clip, prompt, negative_prompt, use_template, clean_caption) -> io.NodeOutput:
        text = prompts.apply_template(prompt) if use_template else prompt
        return io.NodeOutput(encode(clip, text, clean_caption, "positive"),
                             encode(clip, negative_prompt, clean_caption, "negative"))
