"""Quantised DiT layers for ComfyUI: GGUF blocks (Q8_0, Q6_K, Q5_K, Q4_K) and scaled fp8, kept
quantised in memory and dequantised per layer when the layer runs, through ComfyUI's op machinery.

- `operations(fp8_matmul)` is a `comfy.ops.manual_cast` family whose Linear stores a quantised
  weight as a plain uint8 / float8 Parameter (so ComfyUI's model management moves, pins, offloads
  and sizes it as it does any weight: `--lowvram` partial loading and block swap stream the
  quantised bytes) and dequantises it on the input's device in the input's dtype. Weights the file
  keeps unquantised behave as in `manual_cast`.
- `new_patcher()` wraps a model in the running ComfyUI's core patcher class (CoreModelPatcher where it exists, the
  dynamic-VRAM patcher where that is on) with `QuantizedPatching` mixed in, which applies LoRA (and any
  other weight patch) to the *dequantised* weight when a layer runs, as ComfyUI-GGUF does, instead of
  baking it into the stored weight: requantising a patched weight would round most of a LoRA's small
  changes back onto the quantisation grid. Patches on unquantised tensors are baked as usual. A dynamic
  patcher hands a layer its patches as `weight_lowvram_function`; those too are applied to the
  dequantised weight.
- With `fp8_matmul` (the `fp8_e4m3fn_fast` choice, on GPUs ComfyUI says support fp8 compute),
  scaled-fp8 layers without patches multiply in fp8 (`torch._scaled_mm`, the input scaled per
  tensor); anywhere that fails they dequantise instead.
"""
import collections
import functools
import logging

import torch

import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils

from ..allegro.quantization import FP8_DTYPE, FP8_MAX, FP8_SCALED, dequantize
from ..allegro.quantized_layers import QuantizedStorage
from . import compat

# The shape of ModelPatcher.backup entries (core builds the same namedtuple where it backs weights up).
WeightBackup = collections.namedtuple("Dimension", ["weight", "inplace_update"])


class QuantizedLinear(QuantizedStorage, comfy.ops.manual_cast.Linear):
    """A Linear whose weight may be stored quantised (allegro.quantized_layers.QuantizedStorage: `weight_format`
    names the format; None: a plain weight). No full-precision weight is ever allocated for it."""
    fp8_matmul = False

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        torch.nn.Module.__init__(self)
        self.init_storage(in_features, out_features, bias, {"device": device, "dtype": dtype})
        self.lora_patches = None           # (patches, key) set by QuantizedPatching
        self.fp8_matmul_failed = False

    def place(self, tensor, quantized):
        return tensor.to(self.factory["device"]) if quantized else tensor.to(**self.factory)

    def __setattr__(self, name, value):
        # A new weight (ModelPatcher restoring its backup) drops the patches recorded for the old one.
        if name == "weight" and "lora_patches" in self.__dict__:
            object.__setattr__(self, "lora_patches", None)
        super().__setattr__(name, value)

    def dequantized_weight(self, dtype, device) -> torch.Tensor:
        """The weight in `dtype` on `device`, with recorded patches and ComfyUI's weight functions
        (low-VRAM LoRA patches, weight wrappers) applied."""
        non_blocking = comfy.model_management.device_supports_non_blocking(device)
        data = comfy.model_management.cast_to(self.weight, None, device, non_blocking=non_blocking)
        scale = None
        if self.scale_weight is not None:
            scale = comfy.model_management.cast_to(self.scale_weight, None, device, non_blocking=non_blocking)
        dynamic_patch = getattr(self, "weight_lowvram_function", None)
        if self.lora_patches is not None:
            patches, key = self.lora_patches
            weight = dequantize(data, self.weight_format, self.weight_shape, torch.float32, scale)
            weight = comfy.lora.calculate_weight(patches, weight, key, intermediate_dtype=torch.float32).to(dtype)
        elif dynamic_patch is not None:
            weight = dynamic_patch(dequantize(data, self.weight_format, self.weight_shape, torch.float32, scale)).to(dtype)
        else:
            weight = dequantize(data, self.weight_format, self.weight_shape, dtype, scale)
        for function in self.weight_function:
            weight = function(weight)
        return weight

    def cast_bias(self, dtype, device):
        if self.bias is None:
            return None
        non_blocking = comfy.model_management.device_supports_non_blocking(device)
        bias = comfy.model_management.cast_to(self.bias, dtype, device, non_blocking=non_blocking,
                                              copy=len(self.bias_function) > 0)
        for function in self.bias_function:
            bias = function(bias)
        return bias

    def forward_comfy_cast_weights(self, input, *args, **kwargs):
        if self.weight_format is None:
            return super().forward_comfy_cast_weights(input, *args, **kwargs)
        bias = self.cast_bias(input.dtype, input.device)
        if self.can_multiply_in_fp8():
            try:
                return self.fp8_linear(input, bias)
            except (RuntimeError, TypeError, NotImplementedError) as error:
                self.fp8_matmul_failed = True
                logging.info("Allegro: fp8 matrix multiplication unavailable here (%s); dequantising instead.", error)
        return torch.nn.functional.linear(input, self.dequantized_weight(input.dtype, input.device), bias)

    def can_multiply_in_fp8(self) -> bool:
        return (self.fp8_matmul and not self.fp8_matmul_failed and self.weight_format == FP8_SCALED
                and self.lora_patches is None and not self.weight_function
                and getattr(self, "weight_lowvram_function", None) is None)

    def fp8_linear(self, input, bias):
        """input @ weight.T in fp8: the input scaled per tensor into fp8's range, both scales applied
        by the matrix multiplication itself."""
        device = input.device
        non_blocking = comfy.model_management.device_supports_non_blocking(device)
        data = comfy.model_management.cast_to(self.weight, None, device, non_blocking=non_blocking)
        weight_scale = comfy.model_management.cast_to(self.scale_weight, torch.float32, device, non_blocking=non_blocking)
        rows = input.reshape(-1, input.shape[-1])
        input_scale = (rows.abs().amax().float() / FP8_MAX).clamp_min(1e-12)
        quantized = (rows / input_scale.to(rows.dtype)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        out = torch._scaled_mm(quantized, data.t(), scale_a=input_scale, scale_b=weight_scale.reshape(()),
                               out_dtype=input.dtype)
        if bias is not None:
            out = out + bias
        return out.reshape(*input.shape[:-1], self.out_features)


def operations(fp8_matmul: bool = False) -> type:
    """The ops family for a model whose state dict holds QuantizedWeights."""
    linear = type("Linear", (QuantizedLinear,), {"fp8_matmul": fp8_matmul})
    return type("AllegroQuantizedOps", (comfy.ops.manual_cast,), {"Linear": linear})


class QuantizedPatching:
    """Mixed into a ModelPatcher class: records weight patches on quantised layers instead of baking them (see
    the module docstring). The layer's weight is backed up as core does, so restoring it (unpatch, partial
    unload) also drops the recorded patches."""

    def patch_weight_to_device(self, key, device_to=None, *args, **kwargs):
        module_name, _, attribute = key.rpartition(".")
        module = comfy.utils.get_attr(self.model, module_name) if module_name else None
        if attribute != "weight" or getattr(module, "weight_format", None) is None:
            return super().patch_weight_to_device(key, device_to, *args, **kwargs)
        if key not in self.patches:
            return
        if key not in self.backup:
            self.backup[key] = WeightBackup(module.weight, False)
        module.lora_patches = (self.patches[key], key)


@functools.cache
def _quantized(base: type) -> type:
    return type(f"Quantized{base.__name__}", (QuantizedPatching, base), {})


def new_patcher(model, load_device, offload_device, disable_dynamic: bool = False):
    """A patcher for a quantised model: the running ComfyUI's core patcher class with QuantizedPatching mixed
    in. The dynamic-VRAM patcher's constructor returns a plain ModelPatcher for a CPU load device, which drops
    the mix-in: then that class gets it."""
    patcher = _quantized(compat.patcher_class(disable_dynamic))(model, load_device=load_device,
                                                                     offload_device=offload_device)
    if not isinstance(patcher, QuantizedPatching):
        patcher = _quantized(type(patcher))(model, load_device=load_device, offload_device=offload_device)
    return patcher
