"""Where the loaders find weights: single .safetensors files in ComfyUI's model folders (and .gguf
files in models/diffusion_models/ and models/unet/ for the transformer), and diffusers folders (the hub layout: model_index.json, transformer/, vae/, text_encoder/ …) under
models/diffusers/, listed as "diffusers/<folder>".

A name reaches a loader unchecked when its input is linked from another node (ComfyUI checks a
list only for typed-in values), so every name is resolved strictly inside ComfyUI's registered
model folders: a relative path without "..", and every file or folder read must resolve, links
followed, into one of those folders (a models folder that is itself a link, or one added in
extra_model_paths.yaml, is a model folder; a link from inside one to elsewhere is refused).
Errors name only what is inside."""
import json
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

import folder_paths

from ..allegro import checkpoints, confinement
from ..allegro.config import COMPONENT_CLASSES
from ..allegro.quoting import quote

DIFFUSERS_PREFIX = "diffusers/"
# ComfyUI's model folders a loader may read from (links between them are fine).
MODEL_FOLDER_KINDS = ("diffusion_models", "vae", "text_encoders", "diffusers", "checkpoints", "loras")


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


def model_roots() -> list[Path]:
    """ComfyUI's registered model folders of the kinds the loaders read, links resolved."""
    roots = []
    for kind in MODEL_FOLDER_KINDS:
        try:
            roots += [Path(os.path.realpath(base)) for base in folder_paths.get_folder_paths(kind)]
        except KeyError:                     # a kind this ComfyUI does not register
            continue
    return roots


def _checked_name(choice) -> str:
    """The choice if it is a relative path that stays where it starts; else what is wrong with it
    (said without looking at the disk)."""
    if not isinstance(choice, str):
        raise ValueError(f"A model name must be text naming a file or folder in ComfyUI's model folders; got "
                         f"{type(choice).__name__} {quote(choice)}.")
    parts = re.split(r"[\\/]", choice)
    windows = PureWindowsPath(choice)
    problem = ("is empty" if not choice.strip(" /\\") else
               "contains a NUL character" if "\x00" in choice else
               "is an absolute path" if PurePosixPath(choice).is_absolute() or windows.drive or windows.root else
               "goes up a folder ('..')" if ".." in parts else None)
    if problem:
        raise ValueError(f"The model name {quote(choice)} {problem}. Loaders read only from ComfyUI's model folders: "
                         "give a name as the loader lists it, e.g. 'diffusers/Allegro' or 'allegro_t2v.safetensors'.")
    return choice


def _is(path: Path, test) -> bool:
    try:
        return test(path)
    except (OSError, ValueError):          # a name too long for the file system, and the like
        return False


def resolve(choice: str, folder_kind: str) -> Path:
    """The path a loader's choice names, strictly inside ComfyUI's model folders; a clear error if
    it is not there (naming only the model folders searched)."""
    choice = _checked_name(choice)
    roots = model_roots()
    if choice.startswith(DIFFUSERS_PREFIX):
        relative = _checked_name(choice[len(DIFFUSERS_PREFIX):])
        bases = folder_paths.get_folder_paths("diffusers")
        kind = "a folder"
        found = [Path(base) / relative for base in bases if _is(Path(base) / relative, Path.is_dir)]
    else:
        relative, bases, kind = choice, folder_paths.get_folder_paths(folder_kind), "a file"
        found = [Path(base) / relative for base in bases if _is(Path(base) / relative, Path.is_file)]
    if not found:
        where = "put the hub download (model_index.json, transformer/, vae/ …) there" if kind == "a folder" else \
            f"put the .safetensors file in models/{folder_kind}/"
        raise FileNotFoundError(f"{quote(choice)} is not {kind} in ComfyUI's model folders (searched {bases}): "
                                f"{where}.")
    path = found[0]
    if not confinement.is_inside(path, roots):
        confinement.refuse_outside(path)
    return path


def check_choice(value, choices: list[str], folder_kind: str, kinds: str = ".safetensors file"):
    """validate_inputs for a weights list: True, or what is wrong and what can be picked. (It replaces
    ComfyUI's "Value not in list", which says "(list of length N)" once the list is long.)"""
    if value is None or value in choices:      # None: linked from another node, checked when it runs
        return True
    # Choices of the kind the value names (a hub folder or a file) first: those are the likely fix.
    folder_like = str(value).startswith(DIFFUSERS_PREFIX)
    choices = sorted(choices, key=lambda choice: choice.startswith(DIFFUSERS_PREFIX) != folder_like)
    shown = ", ".join(choices[:12]) + (f", … ({len(choices)} in all)" if len(choices) > 12 else "")
    suffix = Path(str(value)).suffix.lower()
    if suffix in checkpoints.PICKLE_SUFFIXES:
        problem = (f"is a PyTorch pickle ({suffix}): pickles can run code when loaded, so they are never listed or "
                   "opened. Use the .safetensors version of these weights")
    else:
        problem = f"is not a {kinds} in models/{folder_kind}/ nor a folder in models/diffusers/"
    return f"{quote(value)} {problem}. Available: {shown or 'nothing'}."   # ComfyUI prefixes the input's name


def read(choice: str, folder_kind: str, component: str) -> checkpoints.Checkpoint:
    """resolve + read: the chosen file or folder's tensors and the config that came with them; every
    file and folder read stays inside the model folders."""
    return checkpoints.read_checkpoint(resolve(choice, folder_kind), component, inside=model_roots())
