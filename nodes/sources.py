"""Where the loaders find weights: single .safetensors files in ComfyUI's model folders, and
diffusers folders (the hub layout: model_index.json, transformer/, vae/, text_encoder/ …) under
models/diffusers/, listed as "diffusers/<folder>"."""
import json
import os
from pathlib import Path

import folder_paths

DIFFUSERS_PREFIX = "diffusers/"

# The class names a component folder's config.json may carry, per component.
COMPONENT_CLASSES = {
    "transformer": ("AllegroTransformer3DModel", "AllegroTransformerTI2V3DModel"),
    "vae": ("AutoencoderKLAllegro", "AllegroAutoencoderKL3D"),
    "text_encoder": ("T5EncoderModel",),
}


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


def file_choices(folder_kind: str) -> list[str]:
    return [name for name in folder_paths.get_filename_list(folder_kind) if name.endswith(".safetensors")]


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
