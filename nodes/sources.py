"""Where the loaders find weights: single .safetensors files in ComfyUI's model folders (and .gguf
files in models/diffusion_models/ and models/unet/ for the transformer), and diffusers folders (the hub layout: model_index.json, transformer/, vae/, text_encoder/ …) under
models/diffusers/, listed as "diffusers/<folder>"."""
import json
import os
from pathlib import Path

import folder_paths

from ..allegro import checkpoints
from ..allegro.config import COMPONENT_CLASSES

DIFFUSERS_PREFIX = "diffusers/"


def _class_name(config_path: Path) -> str | None:
    """diffusers configs name their class in `_class_name`, transformers configs in `architectures`."""
    try:
        config = json.loads(config_path.read_text())
        return config.get("_class_name") or (config.get("architectures") or [None])[0]
    except (OSError, ValueError, AttributeError):
        return None


def _holds(folder: Path, component: str) -> bool:
    if (folder / component / "config.json").is_file():
        return True
    # A pipeline folder whose component folder is incomplete is still listed, so that picking it
    # says what is missing instead of the folder silently not being offered.
    if (folder / "model_index.json").is_file() and (folder / component).is_dir():
        return True
    return _class_name(folder / "config.json") in COMPONENT_CLASSES[component]


def diffusers_choices(component: str) -> list[str]:
    """Folders under models/diffusers/ (two levels deep, e.g. rhymes-ai/Allegro) that hold `component`."""
    found = set()
    for base in folder_paths.get_folder_paths("diffusers"):
        base = Path(base)
        if not base.is_dir():
            continue
        for first in sorted(p for p in base.iterdir() if p.is_dir()):
            for folder in [first] + sorted(p for p in first.iterdir() if p.is_dir()):
                if _holds(folder, component):
                    found.add(DIFFUSERS_PREFIX + folder.relative_to(base).as_posix())
    return sorted(found)


# ComfyUI lists only its own weight suffixes; .gguf files of a model folder get a folder key of their
# own (as ComfyUI-GGUF does), over the same directories.
GGUF_SUFFIX = ".gguf"


def gguf_choices(folder_kind: str) -> list[str]:
    key = f"allegro_gguf_{folder_kind}"
    folders = folder_paths.get_folder_paths(folder_kind)
    if folder_paths.folder_names_and_paths.get(key, ([], None))[0] != folders:
        folder_paths.folder_names_and_paths[key] = (list(folders), {GGUF_SUFFIX})
    return folder_paths.get_filename_list(key)


def file_choices(folder_kind: str, gguf: bool = False) -> list[str]:
    """Weight files in models/<folder_kind>/: .safetensors, and with `gguf` also .gguf."""
    names = [name for name in folder_paths.get_filename_list(folder_kind) if name.endswith(".safetensors")]
    return names + (gguf_choices(folder_kind) if gguf else [])


def resolve(choice: str, folder_kind: str) -> Path:
    """The path a loader's choice names; a clear error if it is gone."""
    if choice.startswith(DIFFUSERS_PREFIX):
        relative = choice[len(DIFFUSERS_PREFIX):]
        for base in folder_paths.get_folder_paths("diffusers"):
            path = Path(base) / relative
            if path.is_dir():
                return path
        raise FileNotFoundError(f"No folder {relative!r} under {folder_paths.get_folder_paths('diffusers')}: "
                                "put the hub download (model_index.json, transformer/, vae/ …) there.")
    path = folder_paths.get_full_path(folder_kind, choice)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"{choice!r} is not in models/{folder_kind}/ "
                                f"(searched {folder_paths.get_folder_paths(folder_kind)}).")
    return Path(path)


def check_choice(value, choices: list[str], folder_kind: str):
    """validate_inputs for a weights list: True, or what is wrong and what can be picked. (It replaces
    ComfyUI's "Value not in list", which says "(list of length N)" once the list is long.)"""
    if value is None or value in choices:      # None: linked from another node, checked when it runs
        return True
    shown = ", ".join(choices[:12]) + (f", … ({len(choices)} in all)" if len(choices) > 12 else "")
    suffix = Path(str(value)).suffix.lower()
    if suffix in checkpoints.PICKLE_SUFFIXES:
        problem = (f"is a PyTorch pickle ({suffix}): pickles can run code when loaded, so they are never listed or "
                   "opened. Use the .safetensors version of these weights")
    else:
        problem = f"is not a weights file in models/{folder_kind}/ nor a folder in models/diffusers/"
    return f"{value!r} {problem}. Available: {shown or 'nothing'}."   # ComfyUI prefixes the input's name


def read(choice: str, folder_kind: str, component: str) -> checkpoints.Checkpoint:
    """resolve + read: the chosen file or folder's tensors and the config that came with them."""
    return checkpoints.read_checkpoint(resolve(choice, folder_kind), component)
