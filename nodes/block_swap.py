"""Allegro Block Swap: keep N of the DiT's blocks on the GPU and stream the others in per model
call, one or more blocks ahead (allegro/block_swap.py; adapters/block_swap.py fits it to ComfyUI's model
management), so the full-size video samples on small GPUs. The estimate of the VRAM this needs is in the
node's text output and the log (allegro/memory_plan.py: computed, not measured)."""
import logging

from comfy_api.v0_0_2 import io, ui

from ..allegro.block_swap import tensor_bytes
from ..allegro.memory_plan import describe_swap
from ..adapters import checks
from ..adapters.block_swap import with_block_swap

CATEGORY = "Allegro/loaders"
MAX_RESIDENT, MAX_PREFETCH = 64, 4          # widget limits: blocks kept on the GPU, blocks copied ahead


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
        patched = with_block_swap(model, min(resident_blocks, len(blocks)), prefetch)
        return io.NodeOutput(patched, text, ui=ui.PreviewText(text))
