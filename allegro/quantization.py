"""Quantised DiT weights: what each tensor is stored as, and the stored tensor itself.

Two families of files hold quantised Allegro weights:
- GGUF (Q8_0, Q6_K, Q5_K, Q4_K blocks, see `gguf_quants`), read and written by `gguf_file`;
- scaled fp8 safetensors, as ComfyUI core's `*_fp8_scaled` files: each quantised Linear weight is
  float8_e4m3fn with a float32 `<layer>.scale_weight` (weight = fp8 value x scale), and an empty
  `scaled_fp8` tensor marks the file.

`QuantizedWeight` carries one such weight through loading: its stored bytes, its format and the
shape of the tensor it encodes (`.shape`, so identifying and measuring a checkpoint works unchanged).

Which tensors are quantised follows the conventions of city96's ComfyUI-GGUF: one-dimensional and
tiny tensors, and `nn.Parameter` tables that bypass the layers, stay float32; the input and output
projections (patch embeddings, the final projection) stay float32 and the timestep / caption / TI2V
conditioning embeddings stay 16-bit, because they quantise badly and are small; the 32 blocks'
attention and MLP weights (99% of the parameters) are quantised.
"""
from dataclasses import dataclass

import torch

from . import gguf_quants
from .quoting import quote

GGUF_FORMATS = tuple(gguf_quants.FORMATS)          # Q8_0, Q4_K, Q5_K, Q6_K
FP8_SCALED = "fp8_scaled"
TARGETS = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", FP8_SCALED)
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max               # 448
SCALED_FP8_MARKER = "scaled_fp8"                   # ComfyUI core's key marking a scaled-fp8 file
SCALE_SUFFIX = ".scale_weight"
INPUT_SCALE_SUFFIX = ".scale_input"

SMALL_TENSOR = 1024                                # elements; smaller tensors are never quantised
# Kept float32: the model's input/output projections and the tables added to activations directly.
FLOAT32_TENSORS = ("pos_embed.", "pos_embed_masked_video.0.", "pos_embed_mask.0.", "pos_embed_first_frame.0.",
                   "proj_out.")
PARAMETER_TABLES = "scale_shift_table"             # model-level and per-block nn.Parameter
# Kept in 16 bits: embeddings of the timestep, the captions and the TI2V conditions.
HALF_TENSORS = ("adaln_single.", "caption_projection.", "pos_embed_masked_video.1.", "pos_embed_mask.1.",
                "pos_embed_first_frame.1.")


@dataclass
class QuantizedWeight:
    """A weight stored quantised. `data`: uint8 GGML blocks [rows, packed] or float8_e4m3fn
    [out, in]; `scale`: the fp8 format's float32 scale (0-d), else None."""
    data: torch.Tensor
    format: str
    shape: torch.Size
    scale: torch.Tensor | None = None

    def __post_init__(self):
        self.shape = torch.Size(self.shape)

    def nelement(self) -> int:
        return self.shape.numel()

    numel = nelement

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.scale.nbytes if self.scale is not None else 0)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize(self.data, self.format, self.shape, dtype, self.scale)


def dequantize(data: torch.Tensor, fmt: str, shape, dtype=torch.float32, scale=None) -> torch.Tensor:
    """The weight that stored `data` in format `fmt` encodes, in `dtype`, on data's device."""
    if fmt == FP8_SCALED:
        return data.to(dtype) * scale.to(device=data.device, dtype=dtype)
    return gguf_quants.dequantize(data, fmt, shape, dtype)


def quantize_fp8_scaled(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn values, float32 scale) with the largest magnitude mapped to fp8's largest (448)."""
    peak = weight.detach().abs().amax().float()
    scale = torch.where(peak > 0, peak / FP8_MAX, torch.ones_like(peak))
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale.reshape(())


def high_precision_float(source_dtype: torch.dtype) -> str:
    """The 16-bit GGUF float for tensors kept unquantised: BF16 when the source is bf16 (lossless),
    else F16, as ComfyUI-GGUF picks."""
    return "BF16" if source_dtype == torch.bfloat16 else "F16"


def storage_format(name: str, shape, target: str, source_dtype: torch.dtype = torch.bfloat16) -> str:
    """What tensor `name` of `shape` is stored as in a `target` file: the target itself, or
    "F32" / "F16" / "BF16" (GGUF floats; a scaled-fp8 file keeps these tensors in the source dtype)."""
    if target not in TARGETS:
        raise ValueError(f"Unknown quantisation {quote(target)}; choose one of {', '.join(TARGETS)}")
    kept = _kept_float(name, shape, source_dtype)
    if kept is not None:
        return kept
    if not fits_blocks(shape, target):
        return high_precision_float(source_dtype)       # rows not whole blocks: kept, as llama.cpp falls back
    return target


def _kept_float(name: str, shape, source_dtype: torch.dtype) -> str | None:
    """The float format of a tensor no target quantises (see the module's docstring), else None."""
    numel = 1
    for size in shape:
        numel *= size
    if (len(shape) != 2 or numel <= SMALL_TENSOR or name.startswith(FLOAT32_TENSORS)
            or name.endswith(PARAMETER_TABLES)):
        return "F32"
    if name.startswith(HALF_TENSORS) or not name.startswith("transformer_blocks."):
        return high_precision_float(source_dtype)
    return None


def fits_blocks(shape, target: str) -> bool:
    """Whether a 2-D weight's rows are whole blocks of `target` (scaled fp8 has no blocks)."""
    return target == FP8_SCALED or shape[-1] % gguf_quants.FORMATS[target][0] == 0


def rows_not_in_blocks(shapes: dict, target: str) -> dict[str, tuple]:
    """{name: shape} of the weights `target` would quantise but keeps 16-bit because their rows are
    not whole blocks (a narrow model's rows, e.g. 48 values against Q4_K's 256)."""
    return {name: tuple(shape) for name, shape in shapes.items()
            if _kept_float(name, shape, torch.bfloat16) is None and not fits_blocks(shape, target)}


def block_weights(shapes: dict) -> list[str]:
    """The weights a quantising target stores quantised when their rows fit its blocks."""
    return [name for name, shape in shapes.items() if _kept_float(name, shape, torch.bfloat16) is None]


FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def quantize_tensor(name: str, tensor: torch.Tensor, target: str):
    """The stored form of `tensor`: a QuantizedWeight, or a float tensor (float32 / 16-bit in GGUF;
    the source dtype in a scaled-fp8 file)."""
    fmt = storage_format(name, tuple(tensor.shape), target, tensor.dtype)
    if fmt == FP8_SCALED:
        values, scale = quantize_fp8_scaled(tensor)
        return QuantizedWeight(values, FP8_SCALED, tensor.shape, scale)
    if fmt in gguf_quants.FORMATS:
        return QuantizedWeight(gguf_quants.quantize(tensor, fmt), fmt, tensor.shape)
    if target == FP8_SCALED:
        return tensor
    return tensor.to(FLOAT_DTYPES[fmt])


def storage_bytes(name: str, shape, target: str, source_dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes tensor `name` takes in a `target` file (and in memory once loaded, before any cast)."""
    fmt = storage_format(name, shape, target, source_dtype)
    numel = 1
    for size in shape:
        numel *= size
    if fmt == FP8_SCALED:
        return numel + 4
    if fmt in gguf_quants.FORMATS:
        block, size, _ = gguf_quants.FORMATS[fmt]
        return numel // block * size
    if target == FP8_SCALED:
        return numel * source_dtype.itemsize
    return numel * FLOAT_DTYPES[fmt].itemsize


def _is_marker(name: str) -> bool:
    return name == SCALED_FP8_MARKER or name.endswith("." + SCALED_FP8_MARKER)


def is_scaled_fp8(weights) -> bool:
    return any(_is_marker(k) or k.endswith(SCALE_SUFFIX) for k in weights)


def gather_scaled_fp8(weights: dict) -> dict:
    """A scaled-fp8 state dict (ComfyUI core's layout) with each `<layer>.weight` + `<layer>.scale_weight`
    pair as one QuantizedWeight; the marker and unit input scales are dropped (input scales only
    matter to fp8 matrix multiplication, which scales inputs itself here)."""
    out = {}
    for name, value in weights.items():
        if _is_marker(name) or name.endswith(SCALE_SUFFIX) or name.endswith(INPUT_SCALE_SUFFIX):
            continue
        scale = weights.get(name[:-len(".weight")] + SCALE_SUFFIX) if name.endswith(".weight") else None
        if scale is not None:
            if value.dtype != FP8_DTYPE:
                raise ValueError(f"{name} has a scale_weight but is stored as {value.dtype}; scaled-fp8 weights must "
                                 "be float8_e4m3fn. The file is damaged or in another format.")
            value = QuantizedWeight(value, FP8_SCALED, value.shape, scale.float().reshape(()))
        out[name] = value
    return out


def scaled_fp8_state_dict(stored: dict) -> dict:
    """The safetensors tensors of a scaled-fp8 file from `quantize_tensor` outputs (core's layout)."""
    out = {SCALED_FP8_MARKER: torch.empty(0, dtype=FP8_DTYPE)}
    for name, value in stored.items():
        if isinstance(value, QuantizedWeight):
            out[name] = value.data.contiguous()
            out[name[:-len(".weight")] + SCALE_SUFFIX] = value.scale.reshape(()).float()
        else:
            out[name] = value.contiguous()
    return out


def formats_in(weights: dict) -> dict[str, int]:
    """{storage format: tensor count} of a loaded state dict (for logs and reports)."""
    counts = {}
    for value in weights.values():
        key = value.format if isinstance(value, QuantizedWeight) else str(value.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + 1
    return counts
