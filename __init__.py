"""ComfyUI-Allegro: the Allegro / Allegro-TI2V video models as ComfyUI nodes.

ComfyUI imports this file as a custom-node package. The model code lives in `allegro/` (pure
PyTorch, usable without ComfyUI); the nodes in `nodes/` adapt it to ComfyUI."""
import importlib.util

if importlib.util.find_spec("comfy") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported outside ComfyUI (pytest collects this folder as a package): no nodes to register.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
