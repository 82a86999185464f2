"""Refuse sizes that cannot fit, with numbers, before allocating anything."""
import psutil

from ..allegro.geometry import VideoSize

GIB = 1024 ** 3


def check_fits_in_memory(size: VideoSize, batch: int = 1):
    """The decoded frames (float32 IMAGE) must fit in this machine's RAM; say how much is needed."""
    needed = size.decoded_bytes(batch)
    total = psutil.virtual_memory().total
    if needed > total:
        raise ValueError(
            f"{batch} x {size.frames} frames of {size.width}x{size.height} would need {needed / GIB:.1f} GiB "
            f"just for the decoded frames; this machine has {total / GIB:.1f} GiB of RAM. "
            "Lower the length, the size or the batch (1280x720x88 needs about 0.9 GiB).")
