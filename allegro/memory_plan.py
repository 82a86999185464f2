"""How much GPU memory an Allegro run needs, per weight format and block-swap setting: the arithmetic
behind the block-swap node's estimate and the README's table. Computed, not measured on a GPU.

Weights: from the real tensor shapes (the DiT built on the meta device) and each format's storage
rule (`quantization.storage_format`); in memory the tensors a quantised file keeps unquantised are
held in the compute dtype (bf16), as the loader stores them.

Activations of one DiT call: the peak inside a block is ACTIVATION_WIDTHS copies of the token
activations [batch, tokens, width] in the compute dtype: the block's input, and 10 more at the MLP
(its modulated input, the 4x-wide hidden and its GELU), with PyTorch SDPA (flash / memory-efficient
attention: no tokens x tokens matrix). `python -m bench.bench_quant --activations` measures the 10
with the profiler on CPU at the released width (bf16 and fp32 alike).
"""
from dataclasses import dataclass

import torch

from .config import RELEASE_TRANSFORMER, TEXT_TOKENS, TransformerConfig
from .geometry import VideoSize
from .quantization import TARGETS, storage_bytes, storage_format

GB = 1e9
PLAIN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8_e4m3fn": torch.float8_e4m3fn}
FORMATS = (*PLAIN_DTYPES, *TARGETS)
# Peak activations inside a block, in units of one [batch, tokens, width] tensor of the compute dtype.
ACTIVATION_WIDTHS = 11.0
# What the CUDA context, cuBLAS workspaces and the caching allocator's slack take besides tensors.
RUNTIME_RESERVE = 1.0 * GB


def dit_shapes(config: TransformerConfig = RELEASE_TRANSFORMER) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of the DiT, from the model class itself on the meta device."""
    from .transformer import AllegroTransformer3D
    with torch.device("meta"):
        model = AllegroTransformer3D(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@dataclass(frozen=True)
class WeightBytes:
    file: int              # bytes on disk (GGUF keeps some tensors in float32)
    resident: int          # bytes in memory once loaded (unquantised tensors in the compute dtype)
    block: int             # resident bytes of one transformer block
    outside_blocks: int    # resident bytes of everything else (embeddings, final layer)


def weight_bytes(fmt: str, config: TransformerConfig = RELEASE_TRANSFORMER, compute=torch.bfloat16,
                 source=torch.bfloat16) -> WeightBytes:
    """File and resident bytes of the DiT in `fmt` (a plain dtype name or a quantisation target)."""
    shapes = dit_shapes(config)
    file_total = resident_total = outside = 0
    blocks = [0] * config.num_layers
    for name, shape in shapes.items():
        numel = 1
        for size in shape:
            numel *= size
        if fmt in PLAIN_DTYPES:
            stored = resident = numel * PLAIN_DTYPES[fmt].itemsize
        else:
            stored = storage_bytes(name, shape, fmt, source)
            quantised = storage_format(name, shape, fmt, source) == fmt
            resident = stored if quantised else numel * compute.itemsize
        file_total += stored
        resident_total += resident
        if name.startswith("transformer_blocks."):
            blocks[int(name.split(".")[1])] += resident
        else:
            outside += resident
    return WeightBytes(file_total, resident_total, max(blocks), outside)


def tokens(frames: int, height: int, width: int) -> int:
    """DiT tokens of a video (geometry's rule: latent frames x height / 16 x width / 16)."""
    return VideoSize(width, height, frames).tokens


def activation_bytes(frames: int, height: int, width: int, batch: int = 1, config: TransformerConfig = RELEASE_TRANSFORMER,
                     compute_bytes: int = 2, widths: float = ACTIVATION_WIDTHS) -> int:
    """Peak activation bytes of one DiT call on `batch` videos (CFG runs cond and uncond as batch 2
    when memory allows, else one after the other), plus the projected captions and RoPE tables."""
    count = tokens(frames, height, width)
    dim = config.inner_dim
    hidden = batch * count * dim * compute_bytes
    captions = batch * TEXT_TOKENS * dim * compute_bytes
    rope = 2 * count * config.attention_head_dim * 4                    # cos and sin tables, float32
    return int(widths * hidden + captions + rope)


@dataclass(frozen=True)
class Plan:
    fmt: str
    resident_blocks: int   # blocks kept on the GPU (the rest streamed); num_layers: no block swap
    weights: int           # resident weight bytes on the GPU
    buffers: int           # streamed blocks in flight (the running one and the prefetched ones)
    activations: int
    total: int

    @property
    def fits(self) -> bool:
        return self.resident_blocks >= 0


def plan(fmt: str, gpu_bytes: float, frames=88, height=720, width=1280, batch=1, prefetch=1,
         config: TransformerConfig = RELEASE_TRANSFORMER) -> Plan:
    """The most blocks that can stay resident on a GPU of `gpu_bytes` (all: no swap needed; -1: even
    full streaming does not fit), with the memory it then uses during sampling (T5 and the VAE are
    not on the GPU then: ComfyUI offloads them)."""
    sizes = weight_bytes(fmt, config)
    activations = activation_bytes(frames, height, width, batch, config)
    dequant = 0 if fmt in PLAIN_DTYPES else 2 * 4 * config.inner_dim * config.inner_dim * 4   # largest layer, fp32
    fixed = RUNTIME_RESERVE + sizes.outside_blocks + activations + dequant
    layers = config.num_layers
    for resident in range(layers, -1, -1):
        buffers = 0 if resident == layers else min(1 + prefetch, layers - resident) * sizes.block
        total = fixed + resident * sizes.block + buffers
        if total <= gpu_bytes:
            return Plan(fmt, resident, sizes.outside_blocks + resident * sizes.block, buffers, activations, int(total))
    return Plan(fmt, -1, sizes.outside_blocks, (1 + prefetch) * sizes.block, activations,
                int(fixed + (1 + prefetch) * sizes.block))


def describe_swap(block_bytes: int, outside_bytes: int, layers: int, resident: int, prefetch: int,
                  frames=88, height=720, width=1280, config: TransformerConfig = RELEASE_TRANSFORMER) -> str:
    """The block-swap node's estimate, in words."""
    resident = max(0, min(resident, layers))
    streamed = layers - resident
    buffers = min(1 + prefetch, streamed) * block_bytes
    weights = outside_bytes + resident * block_bytes
    lines = [f"Block swap: {resident} of {layers} blocks resident on the GPU, {streamed} streamed "
             f"(prefetch {prefetch})." if streamed else f"Block swap: all {layers} blocks resident (nothing streamed)."]
    lines.append(f"DiT weights on the GPU: {weights / GB:.2f} GB ({outside_bytes / GB:.2f} GB outside the blocks + "
                 f"{resident} x {block_bytes / GB:.3f} GB) + {buffers / GB:.2f} GB of streamed blocks in flight.")
    for batch in (1, 2):
        activations = activation_bytes(frames, height, width, batch, config)
        total = RUNTIME_RESERVE + weights + buffers + activations
        lines.append(f"At {frames}x{height}x{width}, batch {batch}{' (CFG in one call)' if batch == 2 else ''}: "
                     f"activations ~{activations / GB:.1f} GB, total ~{total / GB:.1f} GB VRAM "
                     f"(incl. {RUNTIME_RESERVE / GB:.0f} GB CUDA runtime).")
    if streamed:
        lines.append(f"Streamed per model call: {streamed * block_bytes / GB:.2f} GB host -> GPU.")
    lines.append("Estimate (computed, not measured); T5 and the VAE are offloaded by ComfyUI while sampling.")
    return "\n".join(lines)
