"""ComfyUI APIs that changed after 0.3.75, detected where they are used (never by version number).

Each helper does what the running ComfyUI's own loaders do: the newest behaviour where the API exists,
the 0.3.75 behaviour elsewhere. What newer releases added, as read from their sources:
- `comfy.model_patcher.CoreModelPatcher`: the patcher core loaders build models with; main.py points it
  at `ModelPatcherDynamic` when dynamic VRAM (comfy-aimdo) runs. A dynamic patcher streams weights from
  host memory and so loads them with `load_state_dict(..., assign=patcher.is_dynamic())`.
- `comfy.model_management.archive_model_dtypes(module)`: records each parameter's dtype before such a
  load, so the dynamic patcher can cast what it streams.
- `ModelPatcher.cached_patcher_init`: a factory that rebuilds the model from its files, for
  `clone(force_deepcopy=True)`, non-dynamic delegates and multi-GPU copies (see adapters/loading.py).
- model configs' `set_inference_dtype(dtype, manual_cast_dtype, device=...)`: core loaders pass the load
  device where the method takes it.
"""
import inspect

import comfy.model_management
import comfy.model_patcher


def patcher_class(disable_dynamic: bool = False) -> type:
    """The class core loaders wrap a new model in. Read at call time: main.py swaps CoreModelPatcher
    after this module is imported."""
    plain = comfy.model_patcher.ModelPatcher
    return plain if disable_dynamic else getattr(comfy.model_patcher, "CoreModelPatcher", plain)


def is_dynamic(patcher) -> bool:
    check = getattr(patcher, "is_dynamic", None)
    return bool(check()) if callable(check) else False


def archive_dtypes(module) -> None:
    """Record the module's parameter dtypes where ComfyUI's dynamic VRAM needs them (newer releases)."""
    archive = getattr(comfy.model_management, "archive_model_dtypes", None)
    if archive is not None:
        archive(module)


def load_weights(module, state_dict: dict, patcher):
    """module.load_state_dict as core loads weights for `patcher`: a dynamic patcher keeps the state
    dict's own tensors (assign), any other copies them into the module's parameters."""
    return module.load_state_dict(state_dict, strict=False, assign=is_dynamic(patcher))


def set_inference_dtype(model_config, dtype, manual_cast_dtype, device) -> None:
    """model_config.set_inference_dtype as core loaders call it: with the load device where it takes one."""
    if "device" in inspect.signature(model_config.set_inference_dtype).parameters:
        model_config.set_inference_dtype(dtype, manual_cast_dtype, device=device)
    else:
        model_config.set_inference_dtype(dtype, manual_cast_dtype)
