"""Allegro Block Swap: keep N of the DiT's blocks on the GPU and stream the others in per model
call, one or more blocks ahead (allegro/block_swap.py), so the full-size video samples on small GPUs.

It works with ComfyUI's model management rather than around it: ComfyUI loads the model as usual
(fully, or partially with --lowvram / when memory is short); after every load the node's callback
moves the streamed blocks' tensors (GGUF bytes, fp8, bf16: whatever the layers store) to the
offload device and sets up the prefetching, marks their layers as cast-on-the-fly as
ComfyUI's own partial loading does, and tells the model patcher how much of the model is really
on the GPU. When ComfyUI unloads the model the swap goes. At sampling time the controller, a wrapper of the
DiT's block stage in transformer_options (allegro/dit_wrappers.py), brings each streamed block in and out. The estimate of the VRAM this needs is
in the node's text output and the log (allegro/memory_plan.py: computed, not measured)."""
import logging

import torch
from comfy_api.v0_0_2 import io, ui

import comfy.model_management
import comfy.patcher_extension

from ..allegro.block_swap import BlockSwap, tensor_bytes
from ..allegro.dit_wrappers import INNER, BlockInput, DiTWrapper
from ..allegro.memory_plan import describe_swap
from . import checks

CATEGORY = "Allegro/loaders"
CALLBACK_KEY = "allegro_block_swap"
MAX_RESIDENT, MAX_PREFETCH = 64, 4          # widget limits: blocks kept on the GPU, blocks copied ahead


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


class AllegroBlockSwap(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_BlockSwap",
            display_name="Allegro Block Swap",
            category=CATEGORY,
            description="Keeps only the first N of the DiT's 32 blocks on the GPU and streams the others in from RAM "
                        "while the previous block computes, so 88x720x1280 fits small GPUs (with GGUF / fp8 weights "
                        "too). Fewer resident blocks: less VRAM, more copying per step. The text output gives the "
                        "VRAM estimate for the chosen N.",
            inputs=[
                io.Model.Input("model", tooltip="An Allegro model (Load Allegro Model, after any LoRA)."),
                io.Int.Input("resident_blocks", default=16, min=0, max=MAX_RESIDENT,
                             tooltip="Blocks kept on the GPU (Allegro has 32; 32 or more: nothing is streamed)."),
                io.Int.Input("prefetch", default=1, min=0, max=MAX_PREFETCH,
                             tooltip="Streamed blocks copied ahead of use (each costs one block of VRAM)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with block swap; connect it to the "
                                                                   "sampler."),
                     io.String.Output(display_name="vram_estimate", tooltip="The estimate, as text.")],
        )

    @classmethod
    def execute(cls, model, resident_blocks, prefetch) -> io.NodeOutput:
        resident_blocks = checks.whole_number("Allegro Block Swap", "resident_blocks", resident_blocks, 0, MAX_RESIDENT)
        prefetch = checks.whole_number("Allegro Block Swap", "prefetch", prefetch, 0, MAX_PREFETCH)
        diffusion_model = getattr(model.model, "diffusion_model", None)
        blocks = getattr(diffusion_model, "transformer_blocks", None)
        config = getattr(diffusion_model, "config", None)
        if blocks is None or config is None or not hasattr(config, "ti2v"):
            raise ValueError("Allegro Block Swap works on Allegro models: connect the MODEL output of 'Load Allegro "
                             "Model' (or of a LoRA loader after it).")
        block_bytes = max(tensor_bytes(block) for block in blocks)
        outside = tensor_bytes(diffusion_model) - sum(tensor_bytes(block) for block in blocks)
        text = describe_swap(block_bytes, outside, len(blocks), resident_blocks, prefetch, config=config)
        logging.info(text)
        patched = model.clone()
        controller = SwapController(min(resident_blocks, len(blocks)), prefetch)
        options = patched.model_options.get("transformer_options", {})
        patched.model_options["transformer_options"] = {**options, CALLBACK_KEY: controller}
        for call_type, callback in ((comfy.patcher_extension.CallbacksMP.ON_LOAD, controller.on_load),
                                    (comfy.patcher_extension.CallbacksMP.ON_DETACH, controller.on_detach)):
            patched.remove_callbacks_with_key(call_type, CALLBACK_KEY)     # a second Block Swap node replaces the first
            patched.add_callback_with_key(call_type, CALLBACK_KEY, callback)
        return io.NodeOutput(patched, text, ui=ui.PreviewText(text))
