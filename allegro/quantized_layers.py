"""Linear layers that keep a quantised weight (GGUF blocks, scaled fp8) as stored and dequantise it when they
run, in pure PyTorch: what a multi-GPU worker computes a quantised model with, so every rank runs the very
layers rank 0 runs (ComfyUI's own layers, adapters/quantized_ops.py, share the storage rules below).

- `QuantizedStorage`: the storage rules, a mixin for a Linear: `weight` holds the stored bytes (uint8 GGML
  blocks or float8 values, `weight_format` names the format, None for a plain weight), `scale_weight` the
  fp8 scale, `weight_shape` the [out, in] the weight encodes; loading takes QuantizedWeights or plain tensors.
- `QuantizedLinear` / `QUANTIZED_OPS`: the layer and the ops family for AllegroTransformer3D(operations=…).
- `stored_weights(model)`: a model's tensors as its layers store them, quantised weights as QuantizedWeights.
"""
import torch
from torch import nn

from .quantization import QuantizedWeight, dequantize


class QuantizedStorage:
    """Storage and loading of a weight that may be quantised. `place(tensor, quantized)` puts a loaded tensor
    where the layer keeps it (its device; its dtype for plain tensors)."""

    def init_storage(self, in_features: int, out_features: int, bias: bool, factory: dict):
        self.in_features, self.out_features = in_features, out_features
        self.factory = factory
        self.weight_format = None
        self.weight_shape = torch.Size((out_features, in_features))
        self.register_parameter("weight", None)
        self.register_parameter("scale_weight", None)
        self.register_parameter("bias", nn.Parameter(torch.empty(out_features, **factory), requires_grad=False)
                                if bias else None)

    def place(self, tensor: torch.Tensor, quantized: bool) -> torch.Tensor:
        return tensor

    def reset_parameters(self):
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing_keys.append(prefix + "weight")
        else:
            if tuple(weight.shape) != tuple(self.weight_shape):
                error_msgs.append(f"{prefix}weight: shape {tuple(weight.shape)}, the model needs {tuple(self.weight_shape)}")
            quantized = isinstance(weight, QuantizedWeight)
            self.weight_format = weight.format if quantized else None
            self.weight = nn.Parameter(self.place(weight.data if quantized else weight, quantized), requires_grad=False)
            if quantized and weight.scale is not None:
                self.scale_weight = nn.Parameter(self.place(weight.scale.to(torch.float32), True), requires_grad=False)
        if self.bias is not None:
            bias = state_dict.get(prefix + "bias")
            if bias is None:
                missing_keys.append(prefix + "bias")
            else:
                self.bias = nn.Parameter(self.place(bias, False), requires_grad=False)
        known = {prefix + "weight", prefix + "bias"}
        unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in known
                               and "." not in k[len(prefix):])

    def stored(self) -> QuantizedWeight | torch.Tensor:
        """The weight as stored: a QuantizedWeight, or the plain tensor."""
        if self.weight_format is None:
            return self.weight.detach()
        scale = None if self.scale_weight is None else self.scale_weight.detach()
        return QuantizedWeight(self.weight.detach(), self.weight_format, self.weight_shape, scale)


class QuantizedLinear(QuantizedStorage, nn.Module):
    """A Linear over a weight kept as stored, dequantised on the input's device in the input's dtype per call
    (the tensors are used where they were loaded: a worker loads them on its device)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.init_storage(in_features, out_features, bias, {"device": device, "dtype": dtype})

    def forward(self, input):
        data = self.weight.to(input.device)
        if self.weight_format is None:
            weight = data.to(input.dtype)
        else:
            scale = None if self.scale_weight is None else self.scale_weight.to(input.device)
            weight = dequantize(data, self.weight_format, self.weight_shape, input.dtype, scale)
        bias = None if self.bias is None else self.bias.to(device=input.device, dtype=input.dtype)
        return nn.functional.linear(input, weight, bias)


class QUANTIZED_OPS:
    """The ops family (AllegroTransformer3D's `operations`) of a model whose Linear weights may be quantised."""
    Linear = QuantizedLinear
    Conv2d = nn.Conv2d
    LayerNorm = nn.LayerNorm


def stored_weights(model: nn.Module) -> list[tuple[str, QuantizedWeight | torch.Tensor]]:
    """(name, tensor) of every tensor in `model`'s state dict, a quantised layer's weight and scale as one
    QuantizedWeight under `<layer>.weight` (layers keeping quantised weights: QuantizedStorage)."""
    quantized = {name: module for name, module in model.named_modules()
                 if isinstance(module, QuantizedStorage) and module.weight_format is not None}
    weights = []
    for name, tensor in model.state_dict().items():
        layer, _, kind = name.rpartition(".")
        if layer in quantized:
            if kind == "scale_weight":
                continue
            if kind == "weight":
                tensor = quantized[layer].stored()
        weights.append((name, tensor))
    return weights
