"""What the tensors of a weights file hold, checked as it is read: floating-point numbers, all finite.

An integer or boolean tensor under a weight's name is not a model's weight (a quantised or foreign
format, or a file saved wrongly); casting it to float would sample noise without a word. A NaN or an
infinity in any weight turns every video into NaN. Both are refused naming the file and the tensor.
fp8 weights (float8_e4m3fn / e5m2, with or without per-tensor scales) are floating point and pass.

The finite check costs one reduction per tensor: a sum is NaN or infinite whenever an element is,
and only then is the tensor scanned element by element (a finite fp16 sum can overflow, so the scan
decides); fp8 tensors take two byte-wise maxima instead. bench/bench_weight_checks.py measures it
against loading the same file.
"""
from pathlib import Path
from typing import Mapping

import torch

from .checkpoint_kinds import CheckpointError
from .quoting import quote

# safetensors' dtype names: F16, BF16, F32, F64, F8_E4M3, F8_E5M2 … are floating point; BOOL, U8 … I64
# and complex types are not.
_NOT_FLOAT = {"BOOL": "boolean", "U": "unsigned integer", "I": "integer", "C": "complex"}
# Dtypes a sum runs in without widening.
_SUMMABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# fp8 has no fast sum (widening it costs 20x the check), but its NaN/inf bytes are the extremes of its
# bytes read as int8 (the positive ones) and as uint8 (the negative ones): e4m3fn's only non-finite
# bytes are 0x7F/0xFF (NaN), e5m2's 0x7C-0x7F/0xFC-0xFF (inf, NaN). dtype: (lowest int8, lowest uint8).
_FP8_NON_FINITE = {torch.float8_e4m3fn: (0x7F, 0xFF), torch.float8_e5m2: (0x7C, 0xFC)}


def refuse_non_float(path: Path, dtypes: Mapping[str, str]) -> None:
    """`dtypes`: tensor name → safetensors dtype name (from the header, before anything is loaded)."""
    for name, dtype in dtypes.items():
        kind = next((what for prefix, what in _NOT_FLOAT.items() if dtype.upper().startswith(prefix)), None)
        if kind is not None:
            raise CheckpointError(
                f"{path}: tensor {quote(name)} holds {kind} values ({dtype}), not floating-point weights. Allegro's weights "
                "are bf16, fp16, fp32 or fp8; a file with integer or boolean tensors is another format (e.g. a "
                "quantised one) or was saved wrongly, and converting it would sample noise. Use the original "
                ".safetensors file.")


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element of a floating-point tensor is finite (no NaN, no ±inf)."""
    if tensor.numel() == 0:
        return True
    if tensor.dtype in _FP8_NON_FINITE:
        positive, negative = _FP8_NON_FINITE[tensor.dtype]
        signed, unsigned = tensor.view(torch.int8), tensor.view(torch.uint8)
        if tensor.device.type == "cpu":          # numpy's byte maxima are about twice as fast as torch's
            signed, unsigned = signed.numpy(), unsigned.numpy()
        return int(signed.max()) < positive and int(unsigned.max()) < negative
    wide = tensor if tensor.dtype in _SUMMABLE else tensor.to(torch.float32)
    return bool(torch.isfinite(wide.sum())) or bool(torch.isfinite(wide).all())


def non_finite_count(tensor: torch.Tensor) -> int:
    wide = tensor if tensor.dtype in _SUMMABLE else tensor.to(torch.float32)
    return int((~torch.isfinite(wide)).sum())


def refuse_non_finite(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not all_finite(tensor):
            raise CheckpointError(
                f"{path}: tensor {quote(name)} holds {non_finite_count(tensor)} NaN or infinite values (of "
                f"{tensor.numel()}). Weights with NaN or infinity make every video NaN: the file is damaged or "
                "comes from a diverged training run. Download it again.")
