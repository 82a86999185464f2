"""A training list in the seed's format, and how the seed samples a clip from each video.

The list (`.jsonl`: one JSON object a line; `.parquet`: the same columns) names videos with
{"path", "num_frames", "height", "width", "cap"}. As the seed's dataset does, a row is kept when its
listed size is close to the target (`keeps_size`: both sides >= target * hw_thr, the aspect within a
factor hw_aspect_thr of the target's) and it is long enough (`long_enough`: at least
(num_frames - 1) * sample_rate + 1 frames); a clip is `num_frames` frames `sample_rate` apart from a
window drawn in the video (`frame_indices`), centre-cropped to the target aspect and resized to the
target size (`crop_box`, `crop_and_resize`: bilinear, corners aligned, antialiased).

Pure PyTorch: no ComfyUI imports.
"""
import json
import math
import random
from dataclasses import dataclass

import torch

from .config import MAX_SIZE

COLUMNS = ("path", "num_frames", "height", "width", "cap")
DEFAULT_HW_THR = 1.0           # train.py --hw_thr
DEFAULT_HW_ASPECT_THR = 1.5    # train.py --hw_aspect_thr


@dataclass(frozen=True)
class Row:
    line: int                  # 1-based line (jsonl) or row (parquet) number in the list
    path: str
    num_frames: int
    height: int
    width: int
    caption: str


class RowProblem(ValueError):
    """A row that cannot be used; says which one and why."""

    def __init__(self, line: int, path, reason: str):
        self.line, self.path, self.reason = line, path, reason
        where = f"row {line}" + (f" ({path})" if path else "")
        super().__init__(f"{where}: {reason}")


def _shown(value) -> str:
    """A value as JSON would write it (other kinds a parquet table holds, e.g. bytes or dates, as text)."""
    return json.dumps(value, default=str)[:40]


def _missing(value) -> bool:
    """None, or NaN: how pandas-written parquet (the seed's converter) holds a number a row lacked."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _whole(value, key: str, line: int, path) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value)) or value != int(value)):
        raise RowProblem(line, path, f'"{key}" must be a whole number, got {_shown(value)}')
    if not 1 <= int(value) <= MAX_SIZE:
        raise RowProblem(line, path, f'"{key}" is {int(value)}: it must be from 1 to {MAX_SIZE}')
    return int(value)


def parse_row(record, line: int) -> Row:
    """A Row from one decoded JSON object (or parquet record); RowProblem if it lacks a column or a value is
    of the wrong kind or absurd."""
    if not isinstance(record, dict):
        raise RowProblem(line, None, f"is not a JSON object with {', '.join(COLUMNS)}")
    path = record.get("path")
    missing = [key for key in COLUMNS if _missing(record.get(key))]
    if missing:
        raise RowProblem(line, path if isinstance(path, str) else None, f"lacks {', '.join(missing)}")
    if not isinstance(path, str) or not path.strip():
        raise RowProblem(line, None, '"path" must be a non-empty text')
    if not isinstance(record["cap"], str):
        raise RowProblem(line, path, '"cap" must be a text')
    sizes = {key: _whole(record[key], key, line, path) for key in ("num_frames", "height", "width")}
    return Row(line, path, sizes["num_frames"], sizes["height"], sizes["width"], record["cap"])


def parse_jsonl(text: str) -> tuple[list[Row], list[RowProblem]]:
    """The rows of a .jsonl list and the problems of the lines that are not rows (blank lines are skipped)."""
    rows, problems = [], []
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except ValueError as error:
            problems.append(RowProblem(line, None, f"is not valid JSON ({error})"))
            continue
        try:
            rows.append(parse_row(record, line))
        except RowProblem as problem:
            problems.append(problem)
    return rows, problems


def missing_columns(columns) -> list[str]:
    """The seed's columns a table (its column names) lacks."""
    return [key for key in COLUMNS if key not in set(columns)]


def parse_records(records: list) -> tuple[list[Row], list[RowProblem]]:
    """Rows from a parquet table's records (row numbers from 1)."""
    rows, problems = [], []
    for line, record in enumerate(records, start=1):
        try:
            rows.append(parse_row(record, line))
        except RowProblem as problem:
            problems.append(problem)
    return rows, problems


def keeps_size(height: int, width: int, max_height: int, max_width: int, hw_thr: float, hw_aspect_thr: float) -> bool:
    """The seed's resolution filter: both sides at least hw_thr of the target's, and height/width within a
    factor hw_aspect_thr of the target's height/width."""
    target_aspect = max_height / max_width
    aspect = height / width
    return (height >= max_height * hw_thr and width >= max_width * hw_thr
            and target_aspect / hw_aspect_thr <= aspect <= target_aspect * hw_aspect_thr)


def needed_frames(num_frames: int, sample_rate: int) -> int:
    """Frames a video needs for `num_frames` frames `sample_rate` apart."""
    return (num_frames - 1) * sample_rate + 1


def long_enough(video_frames: int, num_frames: int, sample_rate: int) -> bool:
    return video_frames >= needed_frames(num_frames, sample_rate)


def frame_indices(video_frames: int, num_frames: int, sample_rate: int, rng: random.Random) -> list[int] | None:
    """`num_frames` indices `sample_rate` apart in a video of `video_frames` frames: every sample_rate-th frame
    from the first, then a window of num_frames of those starting at a random place (the seed's temporal
    crop). None when the video is too short."""
    strided = range(0, video_frames, sample_rate)
    if len(strided) < num_frames:
        return None
    start = rng.randint(0, len(strided) - num_frames)
    return list(strided[start:start + num_frames])


def crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred crop with the target's aspect: the full width when the video
    is taller than the target's aspect, else the full height (sizes rounded down, offsets to nearest)."""
    target_aspect = target_height / target_width
    if height / width > target_aspect:
        crop_height, crop_width = int(width * target_aspect), width
    else:
        crop_height, crop_width = height, int(height / target_aspect)
    return round((height - crop_height) / 2), round((width - crop_width) / 2), crop_height, crop_width


def crop_and_resize(frames: torch.Tensor, target_height: int, target_width: int) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] → float frames [N, target_height, target_width, 3] in 0..1."""
    top, left, height, width = crop_box(frames.shape[1], frames.shape[2], target_height, target_width)
    if height < 1 or width < 1:
        raise ValueError(f"a {frames.shape[2]}x{frames.shape[1]} video has no {target_width}x{target_height}-aspect "
                         "crop")
    pixels = frames[:, top:top + height, left:left + width].movedim(-1, 1).float() / 255
    pixels = torch.nn.functional.interpolate(pixels, size=(target_height, target_width), mode="bilinear",
                                             align_corners=True, antialias=True)
    return pixels.clamp(0, 1).movedim(1, -1)
