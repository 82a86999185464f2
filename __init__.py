"""ComfyUI-Allegro: the Allegro / Allegro-TI2V video models as ComfyUI nodes.

ComfyUI imports this file as a custom-node package and registers the V3 nodes that
`comfy_entrypoint` lists. The model code lives in `allegro/` (pure PyTorch, usable without ComfyUI);
the nodes in `nodes/` adapt it to ComfyUI."""
import importlib.util

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
# Imported outside ComfyUI (e.g. pytest collecting this folder as a package): no nodes to register.
