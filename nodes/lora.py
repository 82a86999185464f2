"""Load Allegro LoRA: a LoRA for the Allegro DiT in ComfyUI, diffusers/PEFT or kohya format, applied with
ComfyUI's own patching (so strength, stacking, offloading and quantised weights work as for core LoRAs).

Core 'LoraLoaderModelOnly' maps ComfyUI-format (diffusion_model.<module>) and kohya (lora_unet_<module>)
names for any model, but diffusers/PEFT names (transformer.<module>.lora_A.weight) only for model classes
it knows, and ComfyUI has no hook through which a package could add its own: this node renames the
tensors (allegro/lora_keys.py) and hands them to ComfyUI's loader."""
import logging

from comfy_api.v0_0_2 import io

import comfy.sd

from ..allegro.checkpoints import read_safetensors
from ..allegro.lora_keys import COMFY_PREFIX, module_names, to_comfy_layout
from . import sources

CATEGORY = "Allegro/loaders"
FOLDER = "loras"


def apply_lora(model, lora: dict, strength: float, name: str):
    """A clone of `model` (an Allegro ModelPatcher) with the LoRA's patches at `strength`."""
    weights = [key[len(COMFY_PREFIX):] for key in model.model.state_dict() if key.startswith(COMFY_PREFIX)]
    renamed, unmatched = to_comfy_layout(lora, module_names(weights))
    if not renamed:
        examples = ", ".join(sorted(lora)[:3])
        raise ValueError(f"{name} holds no tensor for the Allegro transformer (its names look like {examples}): it is a "
                         "LoRA for another model, or for Allegro's text encoder. Pick a LoRA trained on Allegro.")
    if unmatched:
        logging.warning("%s: %d of its %d tensors name no module of this Allegro model and are left out, e.g. %s",
                        name, len(unmatched), len(lora), ", ".join(unmatched[:4]))
    patched, _ = comfy.sd.load_lora_for_models(model, None, renamed, strength, 0)
    return patched


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
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly the LoRA changes the model: 1 as trained, 0 not at all, "
                                       "negative values reverse it."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with the LoRA applied.")],
        )

    @classmethod
    def validate_inputs(cls, lora_name=None):
        return sources.check_choice(lora_name, sources.file_choices(FOLDER), FOLDER)

    @classmethod
    def execute(cls, model, lora_name, strength_model) -> io.NodeOutput:
        if strength_model == 0:
            return io.NodeOutput(model)
        lora, _ = read_safetensors(sources.resolve(lora_name, FOLDER))
        return io.NodeOutput(apply_lora(model, lora, strength_model, lora_name))
