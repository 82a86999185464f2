"""GGML block quantisation in pure PyTorch: Q8_0, Q6_K, Q5_K and Q4_K, bit-compatible with the
GGUF format (llama.cpp's ggml-quants, which the `gguf` package's numpy code mirrors).

A quantised weight is a uint8 tensor [rows, blocks per row x bytes per block]; each block encodes
`block_size` consecutive values of one row, so a row's length must be a multiple of it (32 for
Q8_0, 256 for the K-quants). Layout of one block (little-endian, f16 = IEEE half):

  Q8_0  (32 values, 34 B):   d f16 | q int8[32]                     x = d * q
  Q6_K  (256 values, 210 B): ql[128] | qh[64] | scales int8[16] | d f16
                             x = d * scale[i // 16] * (q - 32), q 6-bit (4 low bits in ql, 2 in qh)
  Q5_K  (256 values, 176 B): d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
  Q4_K  (256 values, 144 B): d f16 | dmin f16 | scales[12] | qs[128]
                             8 sub-blocks of 32: x = d * sc[s] * q - dmin * m[s], with 6-bit sc, m
                             packed in 12 bytes; q 4-bit (Q5_K: a 5th bit per value in qh)

Dequantisation runs on whatever device the bytes are on (the GPU, per layer, at sampling time).
Quantisation (the converter's job) searches each sub-block's scale (and offset) for the least
squared error, then stores the scales themselves quantised, as llama.cpp's quantiser does; it is
not bit-identical to llama.cpp's (any valid encoding is a valid file), except Q8_0, which is.
"""
import torch

QK_K = 256
# name → (values per block, bytes per block, GGML type id as the GGUF format numbers them)
FORMATS = {
    "Q8_0": (32, 34, 8),
    "Q4_K": (QK_K, 144, 12),
    "Q5_K": (QK_K, 176, 13),
    "Q6_K": (QK_K, 210, 14),
}
FLOAT_TYPE_IDS = {"F32": 0, "F16": 1, "BF16": 30}
NAMES_BY_TYPE_ID = {type_id: name for name, (_, _, type_id) in FORMATS.items()} | \
                   {type_id: name for name, type_id in FLOAT_TYPE_IDS.items()}


def bits_per_weight(name: str) -> float:
    block, size, _ = FORMATS[name]
    return 8 * size / block


def packed_shape(shape, name: str) -> tuple[int, ...]:
    """The uint8 shape that holds a tensor of `shape` in format `name` (rows stay, the last axis packs)."""
    block, size, _ = FORMATS[name]
    if shape[-1] % block:
        raise ValueError(f"{name} needs rows whose length is a multiple of {block}; this tensor's rows are "
                         f"{shape[-1]} long")
    return (*shape[:-1], shape[-1] // block * size)


def _half(raw: torch.Tensor) -> torch.Tensor:
    """[n, 2] uint8 → [n, 1] float32 (little-endian IEEE half)."""
    return raw.contiguous().view(torch.float16).float()


def _half_bytes(values: torch.Tensor) -> torch.Tensor:
    """[n] float → [n, 2] uint8 little-endian f16."""
    return values.to(torch.float16).reshape(-1, 1).view(torch.uint8)


def _round_away(x: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, as C's roundf (torch.round rounds half to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


# ---------------------------------------------------------------------------------------------
# Dequantisation: [..., packed] uint8 → [..., values] float

def _dequantize_q8_0(blocks):
    return _half(blocks[:, :2]) * blocks[:, 2:].view(torch.int8).float()


def _k_scales(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes → 8 six-bit scales and 8 six-bit mins (Q4_K / Q5_K)."""
    low, mid, high = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = torch.cat([low & 63, (high & 15) | ((low >> 2) & 48)], dim=1)
    mins = torch.cat([mid & 63, (high >> 4) | ((mid >> 2) & 48)], dim=1)
    return scales.float(), mins.float()


def _nibbles_by_subblock(qs: torch.Tensor) -> torch.Tensor:
    """qs [n, 128] → 4-bit values [n, 8, 32]: sub-block 2j takes the low nibbles of bytes
    32j..32j+31, sub-block 2j+1 their high nibbles."""
    qs = qs.reshape(-1, 4, 1, 32)
    return torch.cat([qs & 15, qs >> 4], dim=2).reshape(-1, 8, 32)


def _dequantize_q4_k(blocks):
    d, dmin = _half(blocks[:, 0:2]), _half(blocks[:, 2:4])
    scales, mins = _k_scales(blocks[:, 4:16])
    q = _nibbles_by_subblock(blocks[:, 16:144]).float()
    return ((d * scales)[..., None] * q - (dmin * mins)[..., None]).reshape(-1, QK_K)


def _dequantize_q5_k(blocks):
    d, dmin = _half(blocks[:, 0:2]), _half(blocks[:, 2:4])
    scales, mins = _k_scales(blocks[:, 4:16])
    qh = blocks[:, 16:48].reshape(-1, 1, 32)                                 # bit s: sub-block s's 5th bit
    shifts = torch.arange(8, dtype=torch.uint8, device=blocks.device).reshape(1, 8, 1)
    high = (qh >> shifts) & 1
    q = (_nibbles_by_subblock(blocks[:, 48:176]) | (high << 4)).float()
    return ((d * scales)[..., None] * q - (dmin * mins)[..., None]).reshape(-1, QK_K)


def _dequantize_q6_k(blocks):
    ql, qh = blocks[:, 0:128].reshape(-1, 2, 1, 64), blocks[:, 128:192].reshape(-1, 2, 1, 32)
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = _half(blocks[:, 208:210])
    low = torch.cat([ql & 15, ql >> 4], dim=2).reshape(-1, 2, 128)          # value r of half a: nibble r // 64
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=blocks.device).reshape(1, 1, 4, 1)
    high = ((qh >> shifts) & 3).reshape(-1, 2, 128)                          # value r: bits 2(r // 32) of byte r % 32
    q = (low | (high << 4)).to(torch.int16) - 32
    return ((d * scales).reshape(-1, 16, 1) * q.reshape(-1, 16, 16).float()).reshape(-1, QK_K)


_DEQUANTIZERS = {"Q8_0": _dequantize_q8_0, "Q4_K": _dequantize_q4_k, "Q5_K": _dequantize_q5_k,
                 "Q6_K": _dequantize_q6_k}


def dequantize(packed: torch.Tensor, name: str, shape, dtype=torch.float32) -> torch.Tensor:
    """The tensor of `shape` that `packed` (uint8, as `packed_shape`) encodes in format `name`."""
    block, size, _ = FORMATS[name]
    blocks = packed.reshape(-1, size)
    return _DEQUANTIZERS[name](blocks).reshape(shape).to(dtype)


# ---------------------------------------------------------------------------------------------
# Quantisation: float → packed uint8

def _quantize_q8_0(x):
    d = x.abs().amax(dim=1, keepdim=True) / 127
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = _round_away(x * inverse).to(torch.int8)
    return torch.cat([_half_bytes(d), q.view(torch.uint8)], dim=1)


def _best_symmetric_scales(x: torch.Tensor, low: int, high: int, steps=range(-6, 7)) -> torch.Tensor:
    """Per row of x [n, k]: the scale s minimising |x - s q|^2 with q = clamp(round(x / s), low, high),
    searched around the scale that maps the largest-magnitude value onto `low` (the longer side of
    the range, as llama.cpp does), each candidate refined by least squares."""
    peak = x.gather(1, x.abs().argmax(dim=1, keepdim=True))                 # signed largest value
    best_scale = torch.zeros_like(peak)
    best_error = torch.full_like(peak, float("inf"))
    for step in steps:
        inverse = torch.where(peak == 0, torch.zeros_like(peak), (low - 0.1 * step) / peak)
        q = _round_away(x * inverse).clamp(low, high)
        qq = (q * q).sum(dim=1, keepdim=True)
        scale = torch.where(qq > 0, (x * q).sum(dim=1, keepdim=True) / qq.clamp_min(1e-30), torch.zeros_like(qq))
        error = ((x - scale * q) ** 2).sum(dim=1, keepdim=True)
        better = error < best_error
        best_scale, best_error = torch.where(better, scale, best_scale), torch.where(better, error, best_error)
    return best_scale.squeeze(1)


def _quantize_q6_k(x):
    n = x.shape[0]
    sub = x.reshape(n * 16, 16)
    scales = _best_symmetric_scales(sub, -32, 31).reshape(n, 16)
    # The 16 sub-block scales are stored as int8 times one f16 per block.
    peak = scales.gather(1, scales.abs().argmax(dim=1, keepdim=True))
    d = torch.where(peak == 0, torch.zeros_like(peak), peak / -128)
    quantized_scales = torch.where(d == 0, torch.zeros_like(scales), _round_away(scales / d)).clamp(-128, 127)
    d = d.to(torch.float16).float()
    effective = (d * quantized_scales).reshape(n, 16, 1)
    q = torch.where(effective == 0, torch.zeros_like(effective),
                    _round_away(x.reshape(n, 16, 16) / effective)).clamp(-32, 31)
    q = (q + 32).to(torch.uint8).reshape(n, 2, 128)                          # half a, value r
    low, high = q & 15, q >> 4
    ql = (low[:, :, :64] | (low[:, :, 64:] << 4)).reshape(n, 128)
    hq = high.reshape(n, 2, 4, 32)
    qh = (hq[:, :, 0] | (hq[:, :, 1] << 2) | (hq[:, :, 2] << 4) | (hq[:, :, 3] << 6)).reshape(n, 64)
    return torch.cat([ql, qh, quantized_scales.to(torch.int8).view(torch.uint8), _half_bytes(d)], dim=1)


def _best_affine(x: torch.Tensor, top: int, steps=range(-5, 11)) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of x [n, 32]: (scale s > 0, offset m <= 0) minimising |x - (s q + m)|^2 with
    q = clamp(round((x - m) / s), 0, top); candidate grids around (max - min) / top, each refined
    by least squares (offset kept <= 0, as the format stores -m)."""
    low = x.amin(dim=1, keepdim=True).clamp(max=0)
    span = x.amax(dim=1, keepdim=True) - low
    best = (torch.zeros_like(low), low, torch.full_like(low, float("inf")))
    count = x.shape[1]
    for step in steps:
        inverse = torch.where(span == 0, torch.zeros_like(span), (top + 0.1 * step) / span)
        q = _round_away((x - low) * inverse).clamp(0, top)
        # Least squares for x ≈ s q + m.
        sq, sx, sqq, sqx = q.sum(1, keepdim=True), x.sum(1, keepdim=True), (q * q).sum(1, keepdim=True), \
            (q * x).sum(1, keepdim=True)
        det = count * sqq - sq * sq
        scale = torch.where(det > 0, (count * sqx - sq * sx) / det.clamp_min(1e-30), torch.zeros_like(det))
        offset = torch.where(det > 0, (sqq * sx - sq * sqx) / det.clamp_min(1e-30), low)
        positive = offset > 0                                                 # refit with m = 0
        scale = torch.where(positive, torch.where(sqq > 0, sqx / sqq.clamp_min(1e-30), scale), scale)
        offset = torch.where(positive, torch.zeros_like(offset), offset)
        error = ((x - (scale * q + offset)) ** 2).sum(dim=1, keepdim=True)
        better = (error < best[2]) & (scale >= 0)
        best = tuple(torch.where(better, new, old) for new, old in zip((scale, offset, error), best))
    return best[0].squeeze(1), best[1].squeeze(1)


def _quantize_k_affine(x, top: int):
    """Shared by Q4_K (top 15) and Q5_K (top 31): (d, dmin, 12 scale bytes, q [n, 8, 32])."""
    n = x.shape[0]
    scales, offsets = (t.reshape(n, 8) for t in _best_affine(x.reshape(n * 8, 32), top))
    mins = -offsets
    d = (scales.amax(dim=1, keepdim=True) / 63).to(torch.float16).float()
    dmin = (mins.amax(dim=1, keepdim=True) / 63).to(torch.float16).float()
    sc = torch.where(d > 0, _round_away(scales / d.clamp_min(1e-30)), torch.zeros_like(scales)).clamp(0, 63)
    mn = torch.where(dmin > 0, _round_away(mins / dmin.clamp_min(1e-30)), torch.zeros_like(mins)).clamp(0, 63)
    effective, shift = (d * sc).reshape(n, 8, 1), (dmin * mn).reshape(n, 8, 1)
    q = torch.where(effective > 0, _round_away((x.reshape(n, 8, 32) + shift) / effective.clamp_min(1e-30)),
                    torch.zeros_like(effective)).clamp(0, top).to(torch.uint8)
    sc, mn = sc.to(torch.uint8), mn.to(torch.uint8)
    packed = torch.cat([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
                        (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)], dim=1)
    return _half_bytes(d), _half_bytes(dmin), packed, q


def _pack_nibbles(q):
    """[n, 8, 32] 4-bit values → [n, 128]: sub-blocks 2j (low nibble) and 2j+1 (high) share 32 bytes."""
    q = q.reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def _quantize_q4_k(x):
    d, dmin, scales, q = _quantize_k_affine(x, 15)
    return torch.cat([d, dmin, scales, _pack_nibbles(q)], dim=1)


def _quantize_q5_k(x):
    d, dmin, scales, q = _quantize_k_affine(x, 31)
    high = (q >> 4) & 1                                                       # [n, 8, 32]
    shifts = torch.arange(8, dtype=torch.uint8, device=x.device).reshape(1, 8, 1)
    qh = (high << shifts).sum(dim=1).to(torch.uint8)                           # bit s of byte i
    return torch.cat([d, dmin, scales, qh, _pack_nibbles(q & 15)], dim=1)


_QUANTIZERS = {"Q8_0": _quantize_q8_0, "Q4_K": _quantize_q4_k, "Q5_K": _quantize_q5_k, "Q6_K": _quantize_q6_k}


def quantize(tensor: torch.Tensor, name: str, rows_per_chunk: int = 4096) -> torch.Tensor:
    """`tensor` in format `name`: uint8 of `packed_shape(tensor.shape, name)`. Works in float32,
    a chunk of rows at a time, on the tensor's device."""
    block, size, _ = FORMATS[name]
    shape = packed_shape(tuple(tensor.shape), name)
    rows = tensor.reshape(-1, tensor.shape[-1])
    out = torch.empty(rows.shape[0], shape[-1], dtype=torch.uint8, device=tensor.device)
    for start in range(0, rows.shape[0], rows_per_chunk):
        chunk = rows[start:start + rows_per_chunk].float().reshape(-1, block)
        out[start:start + rows_per_chunk] = _QUANTIZERS[name](chunk).reshape(-1, shape[-1])
    return out.reshape(shape)
