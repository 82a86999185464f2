"""Block swap in ComfyUI (the node is nodes/block_swap.py): a controller left on the model patcher that sets
the swap up after each load, removes it on unload, and streams the blocks while the model runs.

It works with ComfyUI's model management rather than around it: ComfyUI loads the model as usual
(fully, or partially with --lowvram / when memory is short); after every load the controller
moves the streamed blocks' tensors (GGUF bytes, fp8, bf16: whatever the layers store) to the
offload device and sets up the prefetching, marks their layers as cast-on-the-fly as
ComfyUI's own partial loading does, and tells the model patcher how much of the model is really
on the GPU. When ComfyUI unloads the model the swap goes. At sampling time the controller, a wrapper of the
DiT's block stage in transformer_options (allegro/dit_wrappers.py), brings each streamed block in and out."""
import logging

import torch

import comfy.model_management
import comfy.patcher_extension

from ..allegro.block_swap import BlockSwap
from ..allegro.dit_wrappers import BlockInput, DiTWrapper


CALLBACK_KEY = "allegro_block_swap"


def device_bytes(module: torch.nn.Module, device: torch.device) -> int:
    return sum(t.nbytes for t in list(module.parameters()) + list(module.buffers()) if t.device == device)


class SwapController(DiTWrapper):
    """What the node leaves on the model patcher: sets the swap up after each load, removes it on unload, and
    streams the blocks while the model runs."""
    name = BlockSwap.name
    order = BlockSwap.order
    changes_output = False

    def __init__(self, resident: int, prefetch: int):
        self.resident, self.prefetch = resident, prefetch
        self.swap: BlockSwap | None = None

    def __deepcopy__(self, memo):           # one controller for the patcher's callbacks and its transformer_options
        return self

    def wrap_block(self, run, block: BlockInput):
        return run(block) if self.swap is None else self.swap.wrap_block(run, block)

    def on_load(self, patcher, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        self.remove()
        device = torch.device(device_to) if device_to is not None else torch.device(patcher.load_device)
        diffusion_model = patcher.model.diffusion_model
        # Resident blocks stay where ComfyUI put them (on the GPU, or partially offloaded if memory was short).
        self.swap = BlockSwap(diffusion_model, self.resident, device, host=patcher.offload_device,
                              prefetch=self.prefetch, move_resident=False)
        for index in self.swap.streamed:
            for module in diffusion_model.transformer_blocks[index].modules():
                if hasattr(module, "comfy_cast_weights") and not hasattr(module, "prev_comfy_cast_weights"):
                    module.prev_comfy_cast_weights = module.comfy_cast_weights
                    module.comfy_cast_weights = True
        model = patcher.model
        model.model_lowvram = True              # ComfyUI restores the layers' cast flags when it unloads the model
        model.model_loaded_weight_memory = device_bytes(model, device)
        if device.type == "cuda":
            comfy.model_management.soft_empty_cache()
        logging.info("Allegro Block Swap: %d of %d blocks resident on %s, %d streamed (prefetch %d); %.2f GB of the "
                     "model on the device", len(self.swap.blocks) - len(self.swap.streamed), len(self.swap.blocks),
                     device, len(self.swap.streamed), self.prefetch, model.model_loaded_weight_memory / 1e9)

    def on_detach(self, patcher=None, unpatch_all=True):
        self.remove()

    def remove(self):
        if self.swap is not None:
            self.swap.remove()
            self.swap = None


def with_block_swap(model, resident: int, prefetch: int):
    """A clone of the MODEL `model` that keeps `resident` blocks on the device and streams the others,
    `prefetch` ahead; a second Block Swap on the same model replaces the first."""
    patched = model.clone()
    controller = SwapController(resident, prefetch)
    options = patched.model_options.get("transformer_options", {})
    patched.model_options["transformer_options"] = {**options, CALLBACK_KEY: controller}
    for call_type, callback in ((comfy.patcher_extension.CallbacksMP.ON_LOAD, controller.on_load),
                                (comfy.patcher_extension.CallbacksMP.ON_DETACH, controller.on_detach)):
        patched.remove_callbacks_with_key(call_type, CALLBACK_KEY)
        patched.add_callback_with_key(call_type, CALLBACK_KEY, callback)
    return patched
