"""Joining clips into one long video: a clip made by continuation (allegro.ti2v.continuation_frames)
begins with `overlap` frames that re-make the previous clip's last `overlap` frames, so the two
overlap there and the joined video is len(previous) + len(next) - overlap frames long.

- "blend" (the default): the overlapping frames cross-fade linearly from the previous clip to the
  next one (weights (i + 1) / (overlap + 1)), so the small difference between the given frames and
  their re-made copies (the VAE round trip, the sampler's deviation) never shows as a jump.
- "drop": the previous clip's frames are kept exactly and the next clip's first `overlap` frames are
  dropped; the cut is right after the last given frame.
"""
import torch

from .quoting import quote

JOIN_MODES = ("blend", "drop")


def join_clips(previous: torch.Tensor, following: torch.Tensor, overlap: int, mode: str = "blend") -> torch.Tensor:
    """previous [N, H, W, C] + following [M, H, W, C] (IMAGE batches) → [N + M - overlap, H, W, C]."""
    if mode not in JOIN_MODES:
        raise ValueError(f"mode must be one of {', '.join(JOIN_MODES)}; got {quote(mode)}")
    for name, clip in (("previous", previous), ("next", following)):
        if clip.ndim != 4 or clip.shape[0] < 1:
            raise ValueError(f"'{name}' must be video frames [frames, height, width, channels]; got shape "
                             f"{list(clip.shape)}.")
    if previous.shape[1:] != following.shape[1:]:
        raise ValueError(f"The clips differ in size: previous frames are {previous.shape[2]}x{previous.shape[1]} "
                         f"with {previous.shape[3]} channels, next frames {following.shape[2]}x{following.shape[1]} "
                         f"with {following.shape[3]} channels. Make both clips at the same width and height.")
    shortest = min(previous.shape[0], following.shape[0])
    if not 0 <= overlap <= shortest:
        raise ValueError(f"overlap_frames ({overlap}) must be from 0 to the shorter clip's length ({shortest} frames: "
                         f"previous {previous.shape[0]}, next {following.shape[0]}).")
    following = following.to(previous.device, previous.dtype)
    if overlap == 0:
        return torch.cat([previous, following])
    if mode == "drop":
        return torch.cat([previous, following[overlap:]])
    weight = torch.arange(1, overlap + 1, dtype=previous.dtype, device=previous.device) / (overlap + 1)
    weight = weight.view(-1, 1, 1, 1)
    blended = previous[-overlap:] * (1 - weight) + following[:overlap] * weight
    return torch.cat([previous[:-overlap], blended, following[overlap:]])
