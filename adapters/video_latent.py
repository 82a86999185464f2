"""The Allegro LATENT: {"samples": [batch, 4, T', height/8, width/8]} plus the video's length.

A latent of T' frames decodes to 4·T' frames (allegro.geometry's frame rule); the video is the first
n of them, n being what the user asked for (4k + 1 lengths decode 3 frames more, as in the
reference). n travels with the samples under FRAME_COUNT_KEY, set by every node here that makes a
latent; a latent from elsewhere (or whose frame count a core node changed) is all its frames."""
import torch

from ..allegro.config import LATENT_CHANNELS
from ..allegro.geometry import decoded_frames, latent_frames

FRAME_COUNT_KEY = "allegro_num_frames"
SHAPE = f"[batch, {LATENT_CHANNELS}, frames, height/8, width/8]"


def make(samples: torch.Tensor, frames: int) -> dict:
    return {"samples": samples, FRAME_COUNT_KEY: frames}


def video_frames(latent: dict) -> int:
    """How many of the decoded frames are the video."""
    available = decoded_frames(latent["samples"].shape[2])
    wanted = latent.get(FRAME_COUNT_KEY)
    return wanted if wanted is not None and decoded_frames(latent_frames(wanted)) == available else available


def is_video_latent(samples: torch.Tensor) -> bool:
    return samples.ndim == 5 and samples.shape[1] == LATENT_CHANNELS


def empty_axes(samples: torch.Tensor) -> str | None:
    """'frames 0, height 0' for a video latent with axes of size 0 (nothing to sample or decode), else None."""
    names = ("batch", "channels", "frames", "height", "width")
    empty = [f"{name} 0" for name, size in zip(names, samples.shape) if size == 0]
    return ", ".join(empty) or None
