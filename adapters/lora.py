"""Applying an Allegro LoRA in ComfyUI (the node is nodes/lora.py): diffusers/PEFT or kohya names renamed to
ComfyUI's (allegro/lora_keys.py) and handed to ComfyUI's own LoRA patching, so strength, stacking, offloading and
quantised weights work as for core LoRAs.

Core 'LoraLoaderModelOnly' maps ComfyUI-format (diffusion_model.<module>) and kohya (lora_unet_<module>)
names for any model, but diffusers/PEFT names (transformer.<module>.lora_A.weight) only for model classes
it knows, and ComfyUI has no hook through which a package could add its own."""
import logging

import comfy.sd

from ..allegro.config import TransformerConfig
from ..allegro.lora_keys import COMFY_PREFIX, model_tensor_names, module_names, shape_misfits, to_comfy_layout
from ..allegro.quoting import quote
from ..allegro.weight_shapes import transformer_shapes


def model_weight_shapes(model) -> dict[str, tuple]:
    """{<module>.weight: shape} of the DiT the patcher holds: from its config (quantised layers store
    packed bytes, not the weight's shape), else from its state dict."""
    config = getattr(getattr(model.model, "diffusion_model", None), "config", None)
    if isinstance(config, TransformerConfig):
        return transformer_shapes(config)
    return {key[len(COMFY_PREFIX):]: tuple(value.shape) for key, value in model.model.state_dict().items()
            if key.startswith(COMFY_PREFIX)}


def apply_lora(model, lora: dict, strength: float, name: str):
    """(a clone of `model` (an Allegro ModelPatcher) with the LoRA's patches at `strength`, a line saying how
    many of its tensors were applied). Refused when none fits the model; a warning when only some do."""
    shapes = model_weight_shapes(model)
    renamed, unmatched = to_comfy_layout(lora, module_names(shapes))
    misfits = shape_misfits(renamed, shapes)
    applied = {key: value for key, value in renamed.items() if key not in misfits}
    wrong_size = ""
    if misfits:
        part, found, weight = next(iter(misfits.values()))
        wrong_size = (f"{len(misfits)} name a layer of this model but have other sizes (e.g. "
                      f"{quote(part)} is {list(found)} for a layer of {list(weight)})")
    if not applied:
        if not renamed and len(set(model_tensor_names(lora, module_names(shapes)))) > len(lora) // 2:
            raise ValueError(f"{name} holds a model's own weights (tensors like {quote(sorted(lora)[0])}), not a LoRA's "
                             "adapter tensors (lora_A / lora_B, lora_down / lora_up …). Nothing was applied. Put "
                             "models in models/diffusion_models/ and pick a LoRA here.")
        if not renamed:
            examples = ", ".join(quote(key) for key in sorted(lora)[:3])
            raise ValueError(f"{name} holds no tensor for the Allegro transformer (its names look like {examples}): it "
                             "is a LoRA for another model, or for Allegro's text encoder. Nothing was applied. Pick a "
                             "LoRA trained on Allegro.")
        raise ValueError(f"None of the {len(lora)} tensors of {name} fits this Allegro model: {wrong_size}. It was made "
                         "for a model of another size. Nothing was applied; pick a LoRA trained on this model.")
    summary = f"{name}: applied {len(applied)} of its {len(lora)} tensors"
    if unmatched or misfits:
        left_out = "; ".join(part for part in (
            f"{len(unmatched)} name no layer of this model (e.g. {', '.join(quote(k) for k in unmatched[:3])})"
            if unmatched else "", wrong_size) if part)
        summary += f"; left out: {left_out}. The LoRA was made for another model or version: its effect is partial."
        logging.warning("Load Allegro LoRA: %s", summary)
    else:
        logging.info("Load Allegro LoRA: %s", summary)
    patched, _ = comfy.sd.load_lora_for_models(model, None, applied, strength, 0)
    return patched, summary


def show_on_node(node_id, text: str) -> None:
    """Text under the node in the front-end (as core's 'Get Image Size' shows sizes); nothing without a server."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if node_id is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(text, node_id)
