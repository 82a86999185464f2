"""Which video sizes Allegro can make, and what they cost, checked before anything is allocated.

The VAE compresses SPATIAL_FACTOR (8) x in space and the DiT patches PATCH_SIZE (2), so width and
height must be multiples of 16.

The frame rule, used everywhere a frame count meets a latent: a video of n frames is
ceil(n / 4) latent frames, and a latent of t frames decodes to 4t frames, of which the first n are
the video. That is the reference pipelines' rule for the lengths they accept (n = 4k and n = 4k + 1:
their "(n - 1) / 4 + 1 for odd n" is the same number), their crop of the decoded frames back to n,
and what encoding n frames does here (the last frame is repeated up to a whole latent frame).
New videos are made at n = 4k or 4k + 1, as the reference accepts; Allegro was trained at 88 and 40.
"""
from dataclasses import dataclass

from .config import PATCH_SIZE, SPATIAL_FACTOR, TEMPORAL_FACTOR
from .quoting import quote

SIZE_MULTIPLE = SPATIAL_FACTOR * PATCH_SIZE


def latent_frames(num_frames: int) -> int:
    """Latent frames that hold a video of `num_frames` frames."""
    return -(-num_frames // TEMPORAL_FACTOR)


def decoded_frames(num_latent_frames: int) -> int:
    """Frames a latent of `num_latent_frames` frames decodes to (a video's length rounded up)."""
    return num_latent_frames * TEMPORAL_FACTOR


@dataclass(frozen=True)
class VideoSize:
    width: int
    height: int
    frames: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(latent frames, latent height, latent width)."""
        return latent_frames(self.frames), self.height // SPATIAL_FACTOR, self.width // SPATIAL_FACTOR

    @property
    def tokens(self) -> int:
        t, h, w = self.latent_shape
        return t * (h // PATCH_SIZE) * (w // PATCH_SIZE)

    def decoded_bytes(self, batch: int = 1) -> int:
        """Size of the decoded frames as a float32 ComfyUI IMAGE."""
        return batch * self.frames * self.height * self.width * 3 * 4


def nearest_multiples(value: int, multiple: int) -> str:
    below = max(multiple, value // multiple * multiple)
    above = below + multiple if below <= value else below
    return f"{below}" if below == value else f"{below} or {above}"


def check_video_size(width: int, height: int, frames: int) -> VideoSize:
    """Raise ValueError naming the offending input and the allowed values; return the size."""
    for name, value in (("width", width), ("height", height), ("length", frames)):
        if isinstance(value, bool) or not isinstance(value, int):      # a linked input can carry anything
            raise ValueError(f"{name} must be a whole number, got {quote(value)}.")
    for name, value in (("width", width), ("height", height)):
        if value < SIZE_MULTIPLE:
            raise ValueError(f"{name} must be at least {SIZE_MULTIPLE} pixels, got {value}.")
        if value % SIZE_MULTIPLE:
            raise ValueError(f"{name} must be a multiple of {SIZE_MULTIPLE} (VAE {SPATIAL_FACTOR}x times DiT patch "
                             f"{PATCH_SIZE}); got {value}, use {nearest_multiples(value, SIZE_MULTIPLE)}.")
    if frames < 1:
        raise ValueError(f"length must be at least 1 frame, got {frames}.")
    if frames % TEMPORAL_FACTOR not in (0, 1):
        low = frames - frames % TEMPORAL_FACTOR
        raise ValueError(f"length must be a multiple of {TEMPORAL_FACTOR} or one more (the VAE makes "
                         f"{TEMPORAL_FACTOR} frames per latent frame); got {frames}, use {low}, {low + 1} or "
                         f"{low + TEMPORAL_FACTOR}. Allegro was trained on 88 and 40.")
    return VideoSize(width, height, frames)
