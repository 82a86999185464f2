"""LoRA files for the Allegro DiT, in the formats trainers write, renamed to one layout.

A LoRA tensor's name is <prefix><module><separator><part>: <module> is a DiT module path (the same in
diffusers, the original repo and this package, e.g. transformer_blocks.0.attn1.to_q) and <part> the
adapter tensor (lora_A.weight / lora_B.weight, lora_down.weight / lora_up.weight, alpha, dora_scale,
diff, …). The formats differ in prefix and separator:

  ComfyUI          diffusion_model.<module>.<part>
  diffusers / PEFT transformer.<module>.<part> (diffusers' save_lora_weights), base_model.model.<module>.<part>
                   (a PEFT model's own state dict), or <module>.<part> with no prefix
  kohya            lora_unet_<module with "_" for ".">.<part>   (also lora_transformer_…)

`to_comfy_layout` renames every tensor to the ComfyUI form, which ComfyUI's LoRA loader maps for any
model (its generic rule); parts are passed on unchanged, so every adapter kind ComfyUI knows works.
Pure: no ComfyUI imports.
"""
import math
from collections.abc import Iterable, Mapping

from .quoting import quote

COMFY_PREFIX = "diffusion_model."
DOTTED_PREFIXES = (COMFY_PREFIX, "transformer.", "base_model.model.", "")
KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_")
LONGEST_PART = 3            # segments of the longest adapter part, e.g. lora_A.default.weight
MODEL_PARTS = ("weight", "bias")   # a layer's own tensors (a model file picked as a LoRA), not adapter parts


def module_names(weight_names: Iterable[str]) -> set[str]:
    """The modules a LoRA can target: every `<module>.weight` of the DiT's state dict."""
    return {name[:-len(".weight")] for name in weight_names if name.endswith(".weight")}


def split_key(key: str, modules: set[str], kohya_names: Mapping[str, str]) -> tuple[str, str] | None:
    """(module, part) of one LoRA tensor name, or None when it names no module of the model."""
    for prefix in KOHYA_PREFIXES:
        if key.startswith(prefix) and "." in key:
            name, part = key[len(prefix):].split(".", 1)
            if name in kohya_names:
                return kohya_names[name], part
    for prefix in DOTTED_PREFIXES:
        if not key.startswith(prefix):
            continue
        segments = key[len(prefix):].split(".")
        # The longest module path that leaves a part (module paths can end where a part begins).
        for cut in range(len(segments) - 1, max(0, len(segments) - 1 - LONGEST_PART), -1):
            module, part = ".".join(segments[:cut]), ".".join(segments[cut:])
            if module in modules and part not in MODEL_PARTS:
                return module, part
    return None


# Adapter parts whose shape follows the layer's weight [out, in, …]: the up half gives the output rows, the
# down half the inputs — all of them, flattened, as ComfyUI multiplies them (a conv layer's [out, in, kh, kw]
# takes a down half of [rank, in·kh·kw], as core's trainer saves it, or of [rank, in, kh, kw]).
OUTPUT_PARTS, INPUT_PARTS = ("lora_up", "lora_B"), ("lora_down", "lora_A")


def shape_misfits(renamed: Mapping, weight_shapes: Mapping[str, tuple]) -> dict[str, tuple[str, tuple, tuple]]:
    """{name: (part, its shape, the layer weight's shape)} for the renamed LoRA tensors (to_comfy_layout's)
    of every layer the LoRA cannot patch: a LoRA made for another width names the same layers with other
    sizes. All of such a layer's tensors are left out (its alpha too); `part` is the tensor that does not
    fit. `weight_shapes`: {<module>.weight: shape} of the model (without the ComfyUI prefix)."""
    modules, wrong = {}, {}
    for name, tensor in renamed.items():
        module_part = name[len(COMFY_PREFIX):]
        module = next((m for m in _prefixes(module_part) if f"{m}.weight" in weight_shapes), None)
        if module is None:
            continue
        modules[name] = module
        weight, part, shape = tuple(weight_shapes[f"{module}.weight"]), module_part[len(module) + 1:], tuple(tensor.shape)
        kind = part.split(".")[0]
        if kind == "diff":
            fits = shape == weight
        elif kind in OUTPUT_PARTS:
            fits = len(shape) >= 1 and shape[0] == weight[0]
        elif kind in INPUT_PARTS:
            fits = len(shape) >= 2 and math.prod(shape[1:]) == math.prod(weight[1:])
        else:
            fits = True                   # alpha, dora_scale, LoHa/LoKr factors: ComfyUI checks these itself
        if not fits and module not in wrong:
            wrong[module] = (module_part, shape, weight)
    return {name: wrong[module] for name, module in modules.items() if module in wrong}


def _prefixes(name: str):
    """'a.b.c.d' → 'a.b.c', 'a.b', 'a' (the longest module path first)."""
    segments = name.split(".")
    for cut in range(len(segments) - 1, 0, -1):
        yield ".".join(segments[:cut])


def model_tensor_names(lora: Mapping, modules: Iterable[str]) -> list[str]:
    """The names that are a layer's own weight or bias (<prefix><module>.weight): a model file, not a LoRA."""
    modules = set(modules)
    return [key for key in lora for prefix in DOTTED_PREFIXES
            if key.startswith(prefix) and key[len(prefix):].rpartition(".")[0] in modules
            and key.rpartition(".")[2] in MODEL_PARTS]


def to_comfy_layout(lora: Mapping, modules: Iterable[str]) -> tuple[dict, list[str]]:
    """(tensors renamed to diffusion_model.<module>.<part>, names that match no module of the model).
    `modules`: the DiT's module paths (module_names of its state dict)."""
    modules = set(modules)
    kohya_names = {module.replace(".", "_"): module for module in modules}
    renamed, unmatched = {}, []
    for key, tensor in lora.items():
        found = split_key(key, modules, kohya_names)
        if found is None:
            unmatched.append(key)
            continue
        module, part = found
        name = f"{COMFY_PREFIX}{module}.{part}"
        if name in renamed:
            raise ValueError(f"The LoRA holds {module}.{part} twice (as {quote(key)} and another name): it mixes formats.")
        renamed[name] = tensor
    return renamed, unmatched
