"""Reading weights safely: single .safetensors and .gguf files, and hub-layout (diffusers) component folders.

Only safetensors and GGUF are read (GGUF by its content, whatever the file is called). PyTorch pickles
(.ckpt/.pt/.pth/.bin) can run code when unpickled, so they are refused before a byte of them is
parsed; the hub's duplicate .bin shards are skipped. Quantised weights (GGUF blocks, scaled fp8)
come out as `quantization.QuantizedWeight`s that keep the shape of the tensor they encode.
A file's header is checked before loading, so a truncated download, a Git LFS pointer or an HTML
error page gives a message that says so instead of a low-level exception.

`read_checkpoint` is the one entry: a file or a folder in, the tensors and the config that came
with them out. What the weights are is `checkpoint_kinds`' job; what config they get, `config`'s.
"""
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from . import quantization, tensor_checks
from .confinement import confine, confined_to
from .checkpoint_kinds import CheckpointError
from .config import COMPONENT_CLASSES
from .quoting import quote

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
SAFETENSORS_HINT = (
    "Use the .safetensors version of these weights (the hub folders have one), or convert the file with "
    "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')` in a Python you trust."
)
# The format caps the JSON header at 100 MB; a larger length means this is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the safetensors header describes it (enough to identify a checkpoint unloaded)."""
    dtype: str
    shape: tuple[int, ...]


def _refuse_pickle(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} {why}: a PyTorch pickle. Pickles can run arbitrary code when loaded, so they are never "
        f"opened here. {SAFETENSORS_HINT}"
    )


def _sniff_foreign_format(path: Path, head: bytes) -> CheckpointError | None:
    """Files that are clearly something else, recognised by their first bytes."""
    if head.startswith(b"PK\x03\x04"):
        return _refuse_pickle(path, "is a zip archive, as torch.save writes it")
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return _refuse_pickle(path, "starts with a pickle header")
    if head.startswith(GGUF_MAGIC):
        return CheckpointError(f"{path} is a GGUF file, not safetensors. Only the Allegro transformer is read from "
                               "GGUF ('Load Allegro Model'); use the .safetensors weights here.")
    if head.startswith(b"version https://git-lfs"):
        return CheckpointError(
            f"{path} is a Git LFS pointer (a small text file), not the weights. Download the real file, e.g. "
            "with `git lfs pull` in the cloned repository or from the model page's download button."
        )
    if head.lstrip()[:1] == b"<":
        return CheckpointError(
            f"{path} is an HTML/XML page, not weights: the download probably saved an error or login page. "
            "Download the file again."
        )
    return None


def _check_is_file(path: Path, what: str = "weights file") -> None:
    confine(path)
    if not path.exists():
        raise CheckpointError(f"The {what} {path} does not exist. Check the path, or put the file there.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, but a {what} was expected here. Pick the file inside it.")


def read_safetensors_header(path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """({tensor name: TensorInfo}, metadata) from a .safetensors file, without loading tensors.
    Raises CheckpointError for a missing, empty, truncated, pickled or otherwise foreign file."""
    path = Path(path)
    _check_is_file(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse_pickle(path, f"has the suffix {path.suffix}, which means")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy failed. Download it again.")
    with path.open("rb") as file:
        head = file.read(64)
        (header_length,) = struct.unpack("<Q", head[:8]) if len(head) >= 8 else (0,)
        # A plausible length followed by "{" is a safetensors header. Test that first: a length
        # such as 640 begins with the same bytes as a pickle (0x80 0x02).
        plausible = 2 <= header_length <= MAX_HEADER_BYTES and head[8:9] == b"{"
        if not plausible:
            foreign = _sniff_foreign_format(path, head)
            if foreign is not None:
                raise foreign
            if len(head) < 8:
                raise CheckpointError(f"{path} is only {size} bytes: too short for a safetensors file. "
                                      "Download it again.")
            raise CheckpointError(
                f"{path} is not a safetensors file (it does not start with a safetensors header). "
                f"Only .safetensors weights can be loaded. {SAFETENSORS_HINT}"
            )
        if 8 + header_length > size:
            raise CheckpointError(
                f"{path} is truncated: its header alone needs {8 + header_length} bytes but the file has {size}. "
                "The download was probably interrupted; download it again."
            )
        file.seek(8)
        raw_header = file.read(header_length)
    try:
        header = json.loads(raw_header.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except ValueError as error:
        raise CheckpointError(
            f"{path} is not a valid safetensors file (its header is not JSON: {error}). "
            f"It may be damaged or in another format; download it again. {SAFETENSORS_HINT}"
        ) from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} has a malformed __metadata__ entry (must map strings to strings).")
    tensors, data_end = {}, 0
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            shape = tuple(int(n) for n in entry["shape"])
            if not isinstance(entry["dtype"], str) or not 0 <= begin <= end:
                raise ValueError
        except (TypeError, ValueError, KeyError):
            raise CheckpointError(f"{path} has a malformed header entry for tensor {quote(name)}; "
                                  "the file is damaged.") from None
        tensors[name] = TensorInfo(entry["dtype"], shape)
        data_end = max(data_end, end)
    available = size - 8 - header_length
    if data_end > available:
        raise CheckpointError(
            f"{path} is truncated: its header describes {data_end} bytes of tensor data but only {available} are "
            "present. The download was probably interrupted; download it again."
        )
    return tensors, metadata


def read_safetensors(path, device="cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict, metadata) from a .safetensors file, checked first (see read_safetensors_header);
    integer/boolean tensors are refused before loading, NaN/inf values after (allegro.tensor_checks)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    header, metadata = read_safetensors_header(path)
    tensor_checks.refuse_non_float(path, {name: info.dtype for name, info in header.items()})
    try:
        state_dict = load_file(str(path), device=str(device))
    except (SafetensorError, RuntimeError, OSError) as error:
        raise CheckpointError(f"{path} could not be read ({error}). The file may be damaged; "
                              "download it again.") from None
    tensor_checks.refuse_non_finite(path, state_dict)
    return state_dict, metadata


# ---------------------------------------------------------------------------------------------
# Hub-layout component folders

# Weight file stems, in order of preference: diffusers models, then transformers models.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
SHARD_NAME = re.compile(r"^(?P<stem>.+)-\d{5}-of-\d{5}\.safetensors$")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`; CheckpointError naming the file if it is missing or malformed."""
    _check_is_file(path, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}). Restore the original {what}.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object, not {type(data).__name__}. "
                              f"Restore the original {what}.")
    return data


def _listing(folder: Path) -> str:
    confine(folder)
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names) if names else "nothing"


def _pick_weights(folder: Path) -> tuple[str, Path]:
    """("single" | "sharded", file) for the component's safetensors weights."""
    for stem in WEIGHT_STEMS:
        if (folder / f"{stem}.safetensors").is_file():
            return "single", folder / f"{stem}.safetensors"
        if (folder / f"{stem}.safetensors.index.json").is_file():
            return "sharded", folder / f"{stem}.safetensors.index.json"
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    singles = sorted(p for p in folder.glob("*.safetensors") if not SHARD_NAME.match(p.name))
    shards = sorted(p for p in folder.glob("*.safetensors") if SHARD_NAME.match(p.name))
    if len(indexes) + len(singles) == 1:
        return ("sharded", indexes[0]) if indexes else ("single", singles[0])
    if len(indexes) + len(singles) > 1:
        names = ", ".join(p.name for p in indexes + singles)
        raise CheckpointError(f"{folder} holds several sets of weights ({names}). Keep one of them in the folder.")
    if shards:
        index = SHARD_NAME.match(shards[0].name)["stem"] + ".safetensors.index.json"
        raise CheckpointError(
            f"{folder} has weight shards ({shards[0].name}, …) but not their index {index}. "
            "Download it into the folder too."
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} has only PyTorch pickle weights ({', '.join(pickles)}), which are never loaded here because "
            f"unpickling can run code. Download the .safetensors files of this component instead. {SAFETENSORS_HINT}"
        )
    raise CheckpointError(
        f"{folder} has no weights: expected diffusion_pytorch_model.safetensors, model.safetensors or a "
        f"*.safetensors.index.json with its shards. Found: {_listing(folder)}."
    )


def _read_sharded(index_path: Path, device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    index = read_json(index_path, "weights index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no \"weight_map\" listing the tensors and their shards. "
                              "Restore the original file.")
    state_dict, metadata = {}, {}
    for shard_name in sorted(set(weight_map.values())):
        shard = index_path.parent / str(shard_name)
        if Path(str(shard_name)).name != shard_name or not shard_name.endswith(".safetensors"):
            raise CheckpointError(f"{index_path} lists {quote(shard_name)}; shards must be .safetensors files "
                                  "in the same folder.")
        if not shard.is_file():
            raise CheckpointError(f"{shard} is listed in {index_path.name} but missing. "
                                  f"Download it into {index_path.parent}.")
        tensors, shard_metadata = read_safetensors(shard, device)
        for name, tensor in tensors.items():
            if name in state_dict:
                raise CheckpointError(f"Tensor {quote(name)} is stored in two shards of {index_path.parent}; "
                                      "the shards do not belong together.")
            state_dict[name] = tensor
        for key, value in shard_metadata.items():
            metadata.setdefault(key, value)
    missing = sorted(name for name in weight_map if name not in state_dict)
    if missing:
        raise CheckpointError(
            f"{index_path} lists {len(missing)} tensors that its shards do not contain (e.g. {quote(missing[0])}): "
            "the shards are from another version. Download the whole folder again."
        )
    return state_dict, metadata


def read_diffusers_component(folder, device="cpu") -> tuple[dict, dict[str, torch.Tensor], dict[str, str]]:
    """(config, state_dict, metadata) of a hub-layout component folder: config.json plus
    diffusion_pytorch_model.safetensors / model.safetensors, or an index with its shards.
    Duplicate .bin weights are skipped unopened."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder. Pick a model component folder (one with config.json).")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json, so it is not a hub-layout model folder. "
                              f"Found: {_listing(folder)}.")
    config = read_json(config_path, "config.json")
    layout, weights = _pick_weights(folder)
    state_dict, metadata = read_safetensors(weights, device) if layout == "single" else _read_sharded(weights, device)
    return config, state_dict, metadata


TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


def _component_class(folder: Path) -> str | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    config = read_json(config_path, "config.json")
    architectures = config.get("architectures") or [None]
    return config.get("_class_name") or architectures[0]


def _looks_like(folder: Path, name: str) -> bool:
    if name == "tokenizer":
        return any((folder / f).is_file() for f in TOKENIZER_FILES)
    if name == "scheduler":
        return (folder / "scheduler_config.json").is_file()
    return (folder / "config.json").is_file()


def find_component(root, name: str) -> Path:
    """The folder of pipeline component `name` (transformer, vae, text_encoder, tokenizer,
    scheduler) for a path the user picked: the pipeline folder (with model_index.json) or the
    component folder itself."""
    root = Path(root)
    if name not in COMPONENT_CLASSES:
        raise ValueError(f"Unknown component {name!r}; expected one of {', '.join(COMPONENT_CLASSES)}")
    confine(root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is a file"
        raise CheckpointError(f"{root} {what}; pick a diffusers-format model folder (with model_index.json) "
                              f"or its {name}/ folder.")
    candidate = root / name
    if candidate.is_dir() and _looks_like(candidate, name):
        confine(candidate)
        return candidate
    if (root / "model_index.json").is_file():
        index = read_json(root / "model_index.json", "model_index.json")
        listed = sorted(k for k, v in index.items()
                        if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None)
        if candidate.is_dir() and name not in ("tokenizer", "scheduler"):
            state = f"has no config.json (it has: {_listing(candidate)})"
        else:
            state = "is empty or incomplete" if candidate.is_dir() else "is missing"
        raise CheckpointError(
            f"{root} is a pipeline folder but its {name}/ folder {state}. model_index.json lists: "
            f"{', '.join(listed) or 'nothing'}; the folder has: {_listing(root)}. Download the {name} folder too."
        )
    if _looks_like(root, name):
        class_name = _component_class(root)
        other = next((c for c, classes in COMPONENT_CLASSES.items() if class_name in classes and c != name), None)
        if other is not None:
            raise CheckpointError(f"{root} holds a {other} ({class_name}), not a {name}. "
                                  f"Pick the {name} folder, or the pipeline folder above it.")
        return root
    raise CheckpointError(
        f"{root} is neither a diffusers pipeline folder (no model_index.json) nor a {name} folder. "
        f"Found: {_listing(root)}. Pick the folder that holds model_index.json, or its {name}/ folder."
    )


# ---------------------------------------------------------------------------------------------
# One entry for loaders: a file or a folder → tensors + the config that came with them

@dataclass
class Checkpoint:
    """Weights as read from disk, before anything decides what they are."""
    weights: dict[str, torch.Tensor]
    declared: dict | None          # config.json, or the 'config' JSON a single file carries in its metadata
    source: Path                   # the component folder or the file (named in errors)
    metadata: dict[str, str] = field(default_factory=dict)
    # Configs of the other components of the same download, when it has them: a pipeline folder's
    # vae/config.json, or the "vae" section of a single file's 'config' metadata.
    companions: dict[str, dict] = field(default_factory=dict)


def metadata_config(metadata: dict, section: str, source) -> tuple[dict | None, dict[str, dict]]:
    """(this component's config, other sections) from a file's 'config' metadata JSON, which is
    either one flat config or {component: config, ...}."""
    text = metadata.get("config")
    if text is None:
        return None, {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}: the 'config' metadata is not valid JSON ({error}).") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: the 'config' metadata should be a JSON object.")
    sections = {k: v for k, v in config.items() if k in COMPONENT_CLASSES and isinstance(v, dict)}
    if not sections:
        return config, {}
    return sections.pop(section, None), sections


def _pipeline_companions(folder: Path, component: str) -> dict[str, dict]:
    pipeline = folder.parent
    if not (pipeline / "model_index.json").is_file():
        return {}
    found = {}
    for other in ("vae",):
        config_path = pipeline / other / "config.json"
        if other != component and config_path.is_file():
            found[other] = read_json(config_path, "config.json")
    return found


def is_gguf(path) -> bool:
    """Whether `path` is a GGUF file, by its first bytes (the name does not matter)."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(4) == GGUF_MAGIC


def read_weights_file(path, device="cpu") -> tuple[dict, dict[str, str]]:
    """(weights, metadata) of a single .safetensors or .gguf file, told apart by content; scaled-fp8
    and GGUF-quantised tensors as QuantizedWeights."""
    path = Path(path)
    _check_is_file(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES and is_gguf(path):
        from .gguf_file import read_gguf
        return read_gguf(path)
    weights, metadata = read_safetensors(path, device)
    if quantization.is_scaled_fp8(weights):
        try:
            weights = quantization.gather_scaled_fp8(weights)
        except ValueError as error:
            raise CheckpointError(f"{path}: {error}") from None
    return weights, metadata


def read_checkpoint(path, component: str, device="cpu", inside: Sequence[Path] | None = None) -> Checkpoint:
    """A hub folder (the pipeline folder or the component's own) or a single .safetensors / .gguf file.
    With `inside`, every file and folder opened or listed must resolve (links followed) into one
    of those folders; anything else is refused without being read or listed."""
    with confined_to(inside):
        return _read_checkpoint(Path(path), component, device)


def _read_checkpoint(path: Path, component: str, device) -> Checkpoint:
    if path.is_dir():
        folder = find_component(path, component)
        config, weights, metadata = read_diffusers_component(folder, device)
        return Checkpoint(weights, config, folder, metadata, _pipeline_companions(folder, component))
    weights, metadata = read_weights_file(path, device)
    declared, companions = metadata_config(metadata, component, path.name)
    return Checkpoint(weights, declared, path, metadata, companions)
