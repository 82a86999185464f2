"""Which video sizes Allegro can make, and what they cost, checked before anything is allocated.

The VAE compresses 8x in space and 4x in time and the DiT patches 2x2, so width and height must
be multiples of 16. The reference pipelines turn n frames into n/4 latent frames (even n) or
(n-1)/4 + 1 (odd n) and crop the 4 decoded frames per latent frame back to n; that rule is exact
for n = 4k and n = 4k + 1, the frame counts accepted here.
"""
from dataclasses import dataclass

SPATIAL_FACTOR = 8      # VAE, per side
TEMPORAL_FACTOR = 4     # VAE
PATCH = 2               # DiT, per side
SIZE_MULTIPLE = SPATIAL_FACTOR * PATCH


def latent_frames(num_frames: int) -> int:
    """Latent frames for a video of `num_frames` frames (the reference pipelines' rule)."""
    if num_frames % 2:
        return (num_frames - 1) // TEMPORAL_FACTOR + 1
    return -(-num_frames // TEMPORAL_FACTOR)


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
        return t * (h // PATCH) * (w // PATCH)

    def decoded_bytes(self, batch: int = 1) -> int:
        """Size of the decoded frames as a float32 ComfyUI IMAGE."""
        return batch * self.frames * self.height * self.width * 3 * 4


def nearest_multiples(value: int, multiple: int) -> str:
    below = max(multiple, value // multiple * multiple)
    above = below + multiple if below <= value else below
    return f"{below}" if below == value else f"{below} or {above}"


def check_video_size(width: int, height: int, frames: int) -> VideoSize:
    """Raise ValueError naming the offending input and the allowed values; return the size."""
    for name, value in (("width", width), ("height", height)):
        if value < SIZE_MULTIPLE:
            raise ValueError(f"{name} must be at least {SIZE_MULTIPLE} pixels, got {value}.")
        if value % SIZE_MULTIPLE:
            raise ValueError(f"{name} must be a multiple of {SIZE_MULTIPLE} (VAE 8x times DiT patch 2); "
                             f"got {value}, use {nearest_multiples(value, SIZE_MULTIPLE)}.")
    if frames < 1:
        raise ValueError(f"length must be at least 1 frame, got {frames}.")
    if frames % TEMPORAL_FACTOR not in (0, 1):
        low = frames - frames % TEMPORAL_FACTOR
        raise ValueError(f"length must be a multiple of 4 or one more (the VAE makes 4 frames per latent "
                         f"frame); got {frames}, use {low}, {low + 1} or {low + 4}. Allegro was trained on 88 and 40.")
    return VideoSize(width, height, frames)
