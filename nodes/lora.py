"""Load Allegro LoRA: a LoRA for the Allegro DiT in ComfyUI, diffusers/PEFT or kohya format, applied with
ComfyUI's own patching (adapters/lora.py)."""
from comfy_api.v0_0_2 import io

from ..allegro.checkpoints import read_safetensors
from ..adapters import checks, sources
from ..adapters.lora import apply_lora, show_on_node

CATEGORY = "Allegro/loaders"
FOLDER = "loras"
MAX_STRENGTH = 100.0


class AllegroLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_LoraLoader",
            display_name="Load Allegro LoRA",
            category=CATEGORY,
            description="Applies a LoRA trained on Allegro to the model, in any of the formats trainers write: "
                        "diffusers/PEFT (transformer.….lora_A / lora_B, with or without alpha), kohya (lora_unet_…) or "
                        "ComfyUI's. Chain several for several LoRAs. (Core 'LoraLoaderModelOnly' reads only the "
                        "kohya and ComfyUI formats for Allegro.)",
            inputs=[
                io.Model.Input("model", tooltip="The Allegro model (or one that already has LoRAs)."),
                io.Combo.Input("lora_name", options=sources.file_choices(FOLDER),
                               tooltip="A LoRA .safetensors in models/loras/."),
                io.Float.Input("strength_model", default=1.0, min=-MAX_STRENGTH, max=MAX_STRENGTH, step=0.01,
                               tooltip="How strongly the LoRA changes the model: 1 as trained, 0 not at all, "
                                       "negative values reverse it."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with the LoRA applied.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, lora_name=None):
        return sources.check_choice(lora_name, sources.file_choices(FOLDER), FOLDER)

    @classmethod
    def execute(cls, model, lora_name, strength_model) -> io.NodeOutput:
        strength_model = checks.finite_number("Load Allegro LoRA", "strength_model", strength_model, -MAX_STRENGTH,
                                              MAX_STRENGTH)
        if strength_model == 0:
            return io.NodeOutput(model)
        lora, _ = read_safetensors(sources.resolve(lora_name, FOLDER))
        patched, summary = apply_lora(model, lora, strength_model, lora_name)
        show_on_node(getattr(getattr(cls, "hidden", None), "unique_id", None), summary)
        return io.NodeOutput(patched)
