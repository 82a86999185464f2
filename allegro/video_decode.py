"""Reading training videos with PyAV (as ComfyUI reads videos): how many frames a file has, and the
frames at given indices as uint8 RGB. Errors are VideoUnreadable, with a message a person can act on.
No ComfyUI imports."""
from pathlib import Path

import av
import numpy as np
import torch


class VideoUnreadable(ValueError):
    pass


def _open(path: Path):
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoUnreadable(f"cannot be opened as a video ({error.__class__.__name__}: {error})") from error
    if not container.streams.video:
        container.close()
        raise VideoUnreadable("holds no video stream")
    return container


def count_frames(path: Path) -> int:
    """The frames the file decodes to (decoded, not the container's estimate, which may be absent or wrong)."""
    container = _open(path)
    try:
        return sum(1 for _ in container.decode(video=0))
    except (av.FFmpegError, ValueError) as error:
        raise VideoUnreadable(f"cannot be decoded ({error.__class__.__name__}: {error})") from error
    finally:
        container.close()


def read_frames(path: Path, indices: list[int]) -> torch.Tensor:
    """uint8 [len(indices), H, W, 3] RGB: the frames at `indices` (ascending), decoded in one pass that stops
    after the last one."""
    wanted, found, decoded = set(indices), {}, 0
    container = _open(path)
    try:
        for index, frame in enumerate(container.decode(video=0)):
            decoded = index + 1
            if index in wanted:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= indices[-1]:
                break
    except (av.FFmpegError, ValueError) as error:
        raise VideoUnreadable(f"cannot be decoded ({error.__class__.__name__}: {error})") from error
    finally:
        container.close()
    if len(found) < len(indices):
        raise VideoUnreadable(f"ended before frame {indices[-1]} (it decoded to {decoded} frames)")
    return torch.from_numpy(np.stack([found[i] for i in indices]))
