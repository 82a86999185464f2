"""How much GPU memory LoRA training of the Allegro DiT needs ('Allegro Train LoRA'): the training
counterpart of memory_plan.py, computed from the real tensor shapes, not measured on a GPU.

  weights       the frozen DiT in the compute dtype (resident blocks, plus the streamed blocks in
                flight with block swap), as memory_plan.plan counts them;
  LoRA states   the adapters on every 2-D+ weight of the DiT (rank r: r x (fan_out + fan_in) values each),
                in the LoRA dtype, with their gradients and AdamW's two moments: 4 copies;
  saved         what the forward keeps for the backward. Without gradient checkpointing, every block
                keeps SAVED_WIDTHS copies of its [tokens, width] activations, and a copy of each of its
                patched weights (ComfyUI applies an adapter as a weight function: W + up @ down is
                made, used and saved per layer). With checkpointing, each block keeps only its input
                (1 width) and one block at a time recomputes its full set during the backward;
  working       the peak inside a block (memory_plan.ACTIVATION_WIDTHS) and the gradient flowing
                back through it (2 widths), plus the captions and RoPE tables.

SAVED_WIDTHS is measured on CPU by `python -m bench.bench_training` (saved-tensor hooks on one
training step of the reduced model, fp32): the bytes a block saves, in units of one [tokens, width]
tensor, the weight-shaped tensors counted apart. (PyTorch's SDPA on CPU, like the flash and
memory-efficient kernels on a GPU, keeps no tokens x tokens matrix; a GPU's math fallback would.)
"""
from dataclasses import dataclass

from .config import RELEASE_TRANSFORMER, TransformerConfig
from .memory_plan import GB, RUNTIME_RESERVE, activation_bytes, dit_shapes, tokens, weight_bytes

# Measured (bench_training, reduced model, 16x128x128): 28.0 widths for blocks 1-3, 30.5 for block 0 (which also
# keeps the embedded input); the patched weights 1.00 x the block's weight bytes.
SAVED_WIDTHS = 28.0
GRADIENT_WIDTHS = 2.0        # the gradient into and out of the block being differentiated
ADAM_COPIES = 4              # parameter, gradient, exp_avg, exp_avg_sq


def lora_values(rank: int, config: TransformerConfig = RELEASE_TRANSFORMER) -> int:
    """Trainable values of rank-`rank` LoRA adapters on every 2-D+ weight of the DiT blocks and embeddings."""
    total = 0
    for name, shape in dit_shapes(config).items():
        if name.endswith(".weight") and len(shape) >= 2:
            fan_in = 1
            for size in shape[1:]:
                fan_in *= size
            total += rank * (shape[0] + fan_in)
    return total


@dataclass(frozen=True)
class TrainingPlan:
    frames: int
    height: int
    width: int
    checkpointing: bool
    resident_blocks: int     # blocks on the GPU; the rest streamed (block swap)
    weights: int
    lora_states: int
    saved: int
    working: int

    @property
    def total(self) -> int:
        return int(RUNTIME_RESERVE + self.weights + self.lora_states + self.saved + self.working)


def training_plan(frames: int, height: int, width: int, checkpointing: bool, resident_blocks: int | None = None,
                  rank: int = 16, lora_bytes: int = 4, prefetch: int = 1,
                  config: TransformerConfig = RELEASE_TRANSFORMER) -> TrainingPlan:
    """The memory of one training step (batch 1, bf16 DiT) at a video size; `resident_blocks` None: no swap."""
    layers = config.num_layers
    resident = layers if resident_blocks is None else max(0, min(resident_blocks, layers))
    sizes = weight_bytes("bf16", config)
    buffers = 0 if resident == layers else min(1 + prefetch, layers - resident) * sizes.block
    one_width = tokens(frames, height, width) * config.inner_dim * 2
    block_saved = int(SAVED_WIDTHS * one_width) + sizes.block          # activations + patched weights
    saved = layers * one_width + block_saved if checkpointing else layers * block_saved
    working = activation_bytes(frames, height, width, 1, config) + int(GRADIENT_WIDTHS * one_width)
    return TrainingPlan(frames, height, width, checkpointing, resident,
                        sizes.outside_blocks + resident * sizes.block + buffers,
                        lora_values(rank, config) * lora_bytes * ADAM_COPIES, saved, working)


def describe(plans: list[TrainingPlan]) -> list[list[str]]:
    """Table rows: size, checkpointing, blocks resident, weights, LoRA states, saved, working, total (GB)."""
    return [[f"{p.frames}x{p.height}x{p.width}", "on" if p.checkpointing else "off", str(p.resident_blocks),
             *(f"{value / GB:.1f}" for value in (p.weights, p.lora_states, p.saved, p.working, p.total))]
            for p in plans]

