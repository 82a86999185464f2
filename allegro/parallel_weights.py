"""How the DiT's weights travel from rank 0 to the workers of a rank group (allegro/parallel_pool.py sends,
allegro/parallel_worker.py receives): a header in the load command, then one broadcast per tensor, in order.

A weight goes as rank 0 stores it: a plain tensor in its own dtype (the worker casts it to the compute dtype,
as rank 0's layers do when they run), a quantised one (allegro.quantization.QuantizedWeight: GGUF blocks or
scaled fp8) as its stored bytes and scale, so the worker builds the same quantised layers
(allegro.quantized_layers) and dequantises exactly as rank 0 does. A `Computed` weight is made only when it
is sent (e.g. a quantised layer's weight with LoRA applied to the dequantised values, as rank 0 computes
it), so rank 0 never holds all of them at once. Pure PyTorch.
"""
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .config import TransformerConfig
from .quantization import QuantizedWeight
from .quantized_layers import QUANTIZED_OPS
from .transformer import AllegroTransformer3D


@dataclass
class Computed:
    """A plain tensor of `shape` and `dtype` that make() returns when it is sent."""
    shape: tuple
    dtype: torch.dtype
    make: object


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def header(weights: list) -> list[dict]:
    """One JSON-able entry per (name, value): the bytes that follow and, for a quantised weight, its format."""
    entries = []
    for name, value in weights:
        if isinstance(value, QuantizedWeight):
            entries.append({"name": name, "shape": list(value.data.shape), "dtype": _dtype_name(value.data.dtype),
                            "format": value.format, "weight_shape": list(value.shape),
                            "scaled": value.scale is not None})
        else:
            entries.append({"name": name, "shape": list(value.shape), "dtype": _dtype_name(value.dtype)})
    return entries


def send(weights: list, device: torch.device, transform=None):
    """Broadcast every weight from rank 0, in order. transform(name, tensor) → tensor, if given, turns a stored
    plain tensor into the one rank 0 computes with (e.g. a low-VRAM LoRA patch), keeping its shape and dtype."""
    for name, value in weights:
        if isinstance(value, QuantizedWeight):
            tensors = [value.data] + ([value.scale.to(torch.float32)] if value.scale is not None else [])
        elif isinstance(value, Computed):
            tensors = [value.make().to(value.dtype)]
        else:
            tensor = value.detach()
            tensors = [(transform(name, tensor) if transform is not None else tensor).to(value.dtype)]
        for tensor in tensors:
            _broadcast(tensor.detach().to(device).contiguous())


def receive(command: dict, device: torch.device) -> AllegroTransformer3D:
    """The DiT of a load command, built on `device` from rank 0's broadcasts: plain weights in the compute dtype,
    quantised ones kept as stored in quantised layers."""
    config = TransformerConfig(**command["config"])
    dtype = getattr(torch, command["dtype"])
    entries = command["tensors"]
    operations = QUANTIZED_OPS if any("format" in entry for entry in entries) else nn
    model = AllegroTransformer3D(config, operations=operations, device="meta", dtype=dtype)   # no memory until loaded
    weights = {}
    for entry in entries:
        data = _receive(entry["shape"], getattr(torch, entry["dtype"]), device)
        if "format" in entry:
            scale = _receive([], torch.float32, device) if entry["scaled"] else None
            weights[entry["name"]] = QuantizedWeight(data, entry["format"], entry["weight_shape"], scale)
        else:
            weights[entry["name"]] = data.to(dtype)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def _broadcast(tensor: torch.Tensor):
    dist.broadcast(tensor.view(-1).view(torch.uint8), src=0)


def _receive(shape, dtype: torch.dtype, device) -> torch.Tensor:
    raw = torch.empty(math.prod(shape) * dtype.itemsize, dtype=torch.uint8, device=device)
    dist.broadcast(raw, src=0)
    return raw.view(dtype).view(shape)
