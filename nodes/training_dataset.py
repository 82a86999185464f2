"""Allegro Training Dataset: a training set (the type 'Allegro Training Clip' makes) from a list in the
seed's format — `.jsonl` (or `.parquet`, with pyarrow installed) rows of {"path", "num_frames",
"height", "width", "cap"} — under ComfyUI's input/ folder, sampled as the seed's dataset samples
(allegro/video_dataset.py), decoded with PyAV, VAE-encoded once and cached next to the list.

Video paths are relative to the list's folder and, links followed, must stay inside input/. Bad rows
never stop the run: each is skipped with a count shown on the node and a log line naming it (its line
and path): malformed JSON, missing columns, absurd or wrong-typed sizes, paths outside input/, missing
or undecodable videos, videos with no frames or too short for num_frames x sample_rate. Rows whose
listed size or length the seed's filters reject are counted as filtered. Captions over T5's 512
tokens are cut there (as the seed's tokenizer does) and counted. A list with no usable row is an error.

The cache (<list folder>/.allegro_cache/<key>.safetensors: the clip's latent and frames) is keyed by
the video's path, size and modification time, the sampling settings and the VAE's weights; it is
written to a temporary name and renamed, so a cancelled or failed run never leaves a half file."""
import hashlib
import json
import logging
import os
import random
from pathlib import Path

import torch
from comfy_api.v0_0_2 import io, ui
from safetensors.torch import load_file, save_file

import comfy.model_management
import comfy.utils
import folder_paths

from ..allegro import confinement, video_dataset
from ..allegro.quoting import quote
from ..allegro.video_decode import VideoUnreadable, count_frames, read_frames
from ..adapters import checks
from ..adapters.text_encoding import encode_reporting
from .training_set import CATEGORY, TRAINING_SET, caption_of, check_clip_shape, make_clip

LIST_SUFFIXES = (".jsonl", ".parquet")
CACHE_FOLDER = ".allegro_cache"
SAMPLING_KEYS = ("num_frames", "sample_rate", "max_height", "max_width", "seed")   # what makes the cached clip
SHOWN_PROBLEMS = 5                 # skipped rows named on the node (all of them go to the log)
SHOWN_IN_ERROR = 20                # named in the error when no row is usable
NODE = "Allegro Training Dataset"
MAX_FRAMES, MAX_SAMPLE_RATE, MAX_SIDE = 1024, 64, 4096
MAX_HW_THR, MAX_HW_ASPECT_THR = 4.0, 100.0
MAX_SEED = 0xFFFFFFFFFFFFFFFF


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


def summary(list_name: str, clips: int, report: dict, shown: int = SHOWN_PROBLEMS) -> str:
    problems = sorted(report["problems"], key=lambda problem: problem.line)
    lines = [f"{list_name}: {clips} clips from {report['rows']} rows ({report['cached']} from the cache)."]
    if report["filtered_size"] or report["filtered_length"]:
        lines.append(f"Filtered as the seed does: {report['filtered_size']} by size (hw_thr, hw_aspect_thr), "
                     f"{report['filtered_length']} too short for num_frames x sample_rate (listed num_frames).")
    if problems:
        lines.append(f"Skipped {len(problems)} bad rows (all in the console log):")
        lines += [f"  {problem}" for problem in problems[:shown]]
    if report["cut_captions"]:
        lines.append(f"{report['cut_captions']} captions were longer than T5's 512 tokens and were cut there.")
    return "\n".join(lines)


class AllegroTrainingDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        choices = list_choices()
        return io.Schema(
            node_id="AllegroVideo_TrainingDataset",
            display_name="Allegro Training Dataset",
            category=CATEGORY,
            description="A training set for 'Allegro Train LoRA' from a list of videos in the seed's format (.jsonl, "
                        "or .parquet with pyarrow) under ComfyUI's input/ folder: clips sampled as the seed does, "
                        "VAE-encoded once and cached, captions encoded with T5. Bad rows are skipped and counted.",
            inputs=[
                io.Combo.Input("list_file", options=choices, default=choices[0] if choices else None,
                               tooltip="A .jsonl (one {\"path\", \"num_frames\", \"height\", \"width\", \"cap\"} "
                                       "object a line) or .parquet list under input/; video paths are relative to "
                                       "its folder."),
                io.Clip.Input("clip", tooltip="T5-XXL, as for 'Allegro Text Encode': encodes the captions (cleaned "
                                              "as the seed cleans them)."),
                io.Vae.Input("vae", tooltip="The Allegro VAE: encodes each clip once (then cached)."),
                io.Int.Input("num_frames", default=88, min=4, max=MAX_FRAMES, step=4,
                             tooltip="Frames per clip (the seed's 88; a multiple of 4)."),
                io.Int.Input("sample_rate", default=1, min=1, max=MAX_SAMPLE_RATE,
                             tooltip="Take every sample_rate-th frame (the seed's default 1)."),
                io.Int.Input("max_height", default=720, min=16, max=MAX_SIDE, step=16,
                             tooltip="Clip height: videos are centre-cropped to the aspect and resized."),
                io.Int.Input("max_width", default=1280, min=16, max=MAX_SIDE, step=16, tooltip="Clip width."),
                io.Float.Input("hw_thr", default=video_dataset.DEFAULT_HW_THR, min=0.0, max=MAX_HW_THR, step=0.05,
                               tooltip="Keep videos whose listed sides are at least this fraction of the clip's."),
                io.Float.Input("hw_aspect_thr", default=video_dataset.DEFAULT_HW_ASPECT_THR, min=1.0, max=MAX_HW_ASPECT_THR,
                               step=0.1, tooltip="Keep videos whose aspect is within this factor of the clip's."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED,
                             tooltip="Picks where in each video the clip starts (part of the cache key)."),
            ],
            outputs=[TRAINING_SET.Output(display_name="training_set", tooltip="To 'Allegro Train LoRA'.")],
        )

    @classmethod
    def validate_inputs(cls, list_file=None):
        if list_file is None or list_file in list_choices():
            return True
        return (f"{quote(list_file)} is not a .jsonl or .parquet file under ComfyUI's input/ folder "
                f"(found: {', '.join(list_choices()[:12]) or 'none'}).")

    @classmethod
    def execute(cls, list_file, clip, vae, num_frames, sample_rate, max_height, max_width, hw_thr, hw_aspect_thr,
                seed) -> io.NodeOutput:
        list_path = listed_file(list_file)
        if list_path is None:
            raise ValueError(f"'{NODE}' got list_file = {quote(list_file)}, which is not a .jsonl or .parquet file "
                             "inside ComfyUI's input/ folder: put the list there (videos in the same folder or below) "
                             "and pick it in 'list_file'.")
        num_frames = checks.whole_number(NODE, "num_frames", num_frames, 4, MAX_FRAMES)
        sample_rate = checks.whole_number(NODE, "sample_rate", sample_rate, 1, MAX_SAMPLE_RATE)
        max_height, max_width = (checks.whole_number(NODE, name, value, 16, MAX_SIDE)
                                 for name, value in (("max_height", max_height), ("max_width", max_width)))
        hw_thr = checks.finite_number(NODE, "hw_thr", hw_thr, 0.0, MAX_HW_THR)
        hw_aspect_thr = checks.finite_number(NODE, "hw_aspect_thr", hw_aspect_thr, 1.0, MAX_HW_ASPECT_THR)
        seed = checks.whole_number(NODE, "seed", seed, 0, MAX_SEED)
        check_clip_shape(num_frames, max_height, max_width, vae)
        settings = {"num_frames": num_frames, "sample_rate": sample_rate, "max_height": max_height,
                    "max_width": max_width, "hw_thr": hw_thr, "hw_aspect_thr": hw_aspect_thr, "seed": seed}
        training_set, report = build_set(list_path, clip, vae, settings)
        for problem in report["problems"]:
            logging.warning("Allegro Training Dataset %s: skipped %s", list_file, problem)
        text = summary(list_file, len(training_set), report)
        logging.info("Allegro Training Dataset %s", text)
        if not report["rows"]:
            raise ValueError(f"{list_file} has no rows: write one JSON object a line, each with the keys path, "
                             "num_frames, height, width and cap.")
        if not training_set:
            named = summary(list_file, 0, report, SHOWN_IN_ERROR)
            raise ValueError(f"No usable clip in {list_file}.\n{named}\nFix or remove those rows, or loosen "
                             "num_frames, sample_rate, hw_thr or hw_aspect_thr.")
        return io.NodeOutput(training_set, ui=ui.PreviewText(text))
