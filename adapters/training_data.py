"""A training set from a list in the seed's format under ComfyUI's input/ folder (the node is
nodes/training_dataset.py): `.jsonl` (or `.parquet`, with pyarrow installed) rows of {"path", "num_frames",
"height", "width", "cap"}, sampled as the seed's dataset samples (allegro/video_dataset.py), decoded with PyAV,
VAE-encoded once and cached next to the list.

Video paths are relative to the list's folder and, links followed, must stay inside input/. Bad rows
never stop the run: each is skipped and reported (its line and path). The cache (<list folder>/.allegro_cache/
<key>.safetensors: the clip's latent and frames) is keyed by the video's path, size and modification time, the
sampling settings and the VAE's weights; it is written to a temporary name and renamed, so a cancelled or failed
run never leaves a half file."""
import hashlib
import json
import logging
import os
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import comfy.model_management
import comfy.utils
import folder_paths

from ..allegro import confinement, video_dataset
from ..allegro.video_decode import VideoUnreadable, count_frames, read_frames
from .text_encoding import encode_reporting
from .training_set import caption_of, make_clip


LIST_SUFFIXES = (".jsonl", ".parquet")
CACHE_FOLDER = ".allegro_cache"
SAMPLING_KEYS = ("num_frames", "sample_rate", "max_height", "max_width", "seed")   # what makes the cached clip


def input_root() -> Path:
    return Path(os.path.realpath(folder_paths.get_input_directory()))


def list_choices() -> list[str]:
    """.jsonl and .parquet files under input/ (hidden folders skipped), as paths relative to it."""
    root = input_root()
    found = []
    for folder, subfolders, files in os.walk(root):          # links not followed: no cycles
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found += [(Path(folder) / name).relative_to(root).as_posix() for name in files if name.endswith(LIST_SUFFIXES)]
    return sorted(found)


def inside_input(relative: str, base: Path) -> Path | None:
    """base / relative if it is a relative path that, links followed, stays inside input/; else None."""
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts or "\x00" in relative:
        return None
    path = base / candidate
    return path if confinement.is_inside(path, [input_root()]) else None


def listed_file(list_file) -> Path | None:
    """The list file a 'list_file' value names, if it is a .jsonl/.parquet file inside input/; else None
    (also for text no file system takes as a name: too long, or not encodable)."""
    if not isinstance(list_file, str):
        return None
    try:
        path = inside_input(list_file, input_root())
        return path if path is not None and path.suffix in LIST_SUFFIXES and path.is_file() else None
    except (OSError, ValueError):
        return None


def shown_name(path: Path) -> str:
    """The list's name as 'list_file' shows it (relative to input/)."""
    try:
        return path.relative_to(input_root()).as_posix()
    except ValueError:
        return path.name


def read_parquet(path: Path) -> tuple[list, list]:
    """The rows of a .parquet list (pyarrow.parquet.read_table on the open file: no URI or partition guessing)."""
    name = shown_name(path)
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ValueError(f"{name} is a .parquet list; reading it needs the pyarrow package, which this ComfyUI's "
                         "Python lacks: install it into that Python (`python -m pip install pyarrow`, with the "
                         "python that runs ComfyUI), or write the list as .jsonl (one JSON object a line).") from None
    try:
        with open(path, "rb") as handle:
            table = pyarrow.parquet.read_table(handle)
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        reason = str(error).replace("Could not open Parquet input source '<Buffer>': ", "")   # the open file's name
        raise ValueError(f"{name} cannot be read as a .parquet table ({reason}): write it again, or write the "
                         "list as .jsonl (one JSON object a line).") from error
    missing = video_dataset.missing_columns(table.column_names)
    if missing:
        raise ValueError(f"{name} has no column {', '.join(missing)}: a .parquet list needs the columns "
                         f"{', '.join(video_dataset.COLUMNS)} (it has {', '.join(table.column_names) or 'none'}).")
    return video_dataset.parse_records(table.select(list(video_dataset.COLUMNS)).to_pylist())


def read_list(path: Path) -> tuple[list, list]:
    if path.suffix == ".parquet":
        return read_parquet(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path.name} cannot be read as UTF-8 text ({error}): save the list as UTF-8 text, one JSON "
                         "object a line.") from error
    return video_dataset.parse_jsonl(text)


def vae_identity(vae) -> str:
    """A fingerprint of the VAE's weights (names, shapes, dtypes and a few values of each) and dtype."""
    digest = hashlib.sha256(str(vae.vae_dtype).encode())
    for name, tensor in vae.first_stage_model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(torch.cat([flat[:8], flat[-8:]]).float().cpu().numpy().tobytes())
    return digest.hexdigest()


def cache_key(video: Path, settings: dict, vae_id: str) -> str:
    stat = video.stat()
    described = json.dumps({"path": str(video), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                            "settings": settings, "vae": vae_id}, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:32]


def write_atomically(tensors: dict, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(partial))
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def cached_clip(path: Path) -> dict | None:
    try:
        return load_file(str(path)) if path.is_file() else None
    except Exception:                       # an unreadable cache entry is made again
        return None


def encode_row(row, video: Path, settings: dict, vae, cache: Path) -> tuple[dict, bool]:
    """({"latent", "frames"}, whether it came from the cache) for one row; VideoUnreadable/RowProblem if
    the video cannot give a clip."""
    cached = cached_clip(cache)
    if cached is not None and {"latent", "frames"} <= set(cached):
        return cached, True
    total = count_frames(video)
    if total == 0:
        raise VideoUnreadable("decodes to no frames")
    rng = random.Random(f"{settings['seed']}:{row.path}")
    indices = video_dataset.frame_indices(total, settings["num_frames"], settings["sample_rate"], rng)
    if indices is None:
        raise VideoUnreadable(f"has {total} frames; {settings['num_frames']} frames every {settings['sample_rate']} "
                              f"need {video_dataset.needed_frames(settings['num_frames'], settings['sample_rate'])}")
    frames = video_dataset.crop_and_resize(read_frames(video, indices), settings["max_height"], settings["max_width"])
    clip = make_clip(frames, None, vae)
    tensors = {"latent": clip["latent"], "frames": clip["frames"]}
    try:
        write_atomically(tensors, cache)
    except OSError as error:                # a full or read-only disk: train from memory, encode again next time
        logging.warning("Allegro Training Dataset: row %d (%s) not cached in %s: %s", row.line, row.path,
                        cache.parent, error)
    return tensors, False


def build_set(list_path: Path, clip, vae, settings: dict) -> tuple[list, dict]:
    """(training set, report) for a list file."""
    rows, problems = read_list(list_path)
    report = {"rows": len(rows) + len(problems), "filtered_size": 0, "filtered_length": 0, "cut_captions": 0,
              "cached": 0, "problems": problems}
    base, vae_id = list_path.parent, vae_identity(vae)
    kept = []
    for row in rows:
        if not video_dataset.keeps_size(row.height, row.width, settings["max_height"], settings["max_width"],
                                        settings["hw_thr"], settings["hw_aspect_thr"]):
            report["filtered_size"] += 1
        elif not video_dataset.long_enough(row.num_frames, settings["num_frames"], settings["sample_rate"]):
            report["filtered_length"] += 1
        else:
            kept.append(row)
    training_set, progress = [], comfy.utils.ProgressBar(max(len(kept), 1))
    for row in kept:
        comfy.model_management.throw_exception_if_processing_interrupted()
        try:
            video = inside_input(row.path, base)
            if video is None:
                raise VideoUnreadable("is not a relative path inside ComfyUI's input/ folder")
            if not video.is_file():
                raise VideoUnreadable("is not a file (missing?)")
            sampling = {key: settings[key] for key in SAMPLING_KEYS}
            cache = base / CACHE_FOLDER / f"{cache_key(video, sampling, vae_id)}.safetensors"
            tensors, from_cache = encode_row(row, video, settings, vae, cache)
        except (VideoUnreadable, OSError) as error:
            report["problems"].append(video_dataset.RowProblem(row.line, row.path, str(error)))
            progress.update(1)
            continue
        conditioning, cut = encode_reporting(clip, row.caption, True, f"row {row.line} caption")
        report["cut_captions"] += cut
        report["cached"] += from_cache
        training_set.append({**tensors, "caption": caption_of(conditioning, "cap")})
        progress.update(1)
    return training_set, report
