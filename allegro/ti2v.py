"""Allegro-TI2V inputs: conditioning images at chosen frames and the frame mask, as the original
pipeline makes them.

The original pipeline (the only TI2V reference) takes images with their frame indices
(`conditional_images_indices`; its script passes [0] or [0, -1]). It centre-crops each image to the
target aspect, resizes it (bilinear, antialiased, align_corners=True) and scales it to [-1, 1];
places the images at their frames of an otherwise black video that the VAE encodes; and builds a
per-frame mask (0 = given, 1 = to generate) resized to the latent grid, whose frame axis is then
*viewed* as 4 channels x latent frames: channel c, latent frame t <-> video frame c*T' + t.

The frame index rule (`resolve_frame_indices`): any frame of the video may be given, each at most
once — 0..n-1, or -n..-1 counted from the end (-1 = the last frame, as the reference script's
[0, -1]). Nothing in the latent grouping restricts it: the mask has one entry per video frame, and
the VAE encodes a given frame together with the (black or given) frames of its 4-frame group,
exactly as in training, whose masks mixed first-frame, first+last-frame, continuation (the first
k frames) and random frame subsets.

That view needs exactly 4*T' frames, so the original fails for lengths 4k + 1. Here such a clip
is handled as the 4*T' frames the VAE decodes (indices still count the n frames of the video, so
-1 is frame n - 1; the decode node crops the extra frames), which is the original's rule whenever
it runs.
"""
import re

import torch
import torch.nn.functional as F

from .config import TEMPORAL_FACTOR
from .quoting import quote

# How an image of another aspect than the video becomes a frame; "crop" is the reference's.
RESIZE_MODES = ("crop", "pad", "stretch")


def center_crop_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the largest centred crop with the target aspect."""
    ratio = target_height / target_width
    if height / width > ratio:
        crop_height, crop_width = int(width * ratio), width
    else:
        crop_height, crop_width = height, int(height / ratio)
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return top, left, max(crop_height, 1), max(crop_width, 1)


def fit_box(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int, int, int]:
    """(top, left, fitted height, fitted width): the whole image scaled into the target, centred."""
    if height * target_width > width * target_height:          # taller than the target: full height
        fitted_height, fitted_width = target_height, round(target_height * width / height)
    else:
        fitted_height, fitted_width = round(target_width * height / width), target_width
    fitted_height, fitted_width = min(max(fitted_height, 1), target_height), min(max(fitted_width, 1), target_width)
    return (target_height - fitted_height) // 2, (target_width - fitted_width) // 2, fitted_height, fitted_width


def _resize(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=True, antialias=True)


def prepare_image(image: torch.Tensor, height: int, width: int, resize: str = "crop") -> torch.Tensor:
    """image [H, W, C] in 0..1 (ComfyUI IMAGE frame; C = 3, or 4 with alpha, which is dropped)
    → [3, height, width] in [-1, 1]. `resize`: "crop" (the reference: centre crop to the target
    aspect, then resize), "pad" (the whole image resized to fit, centred on black bars) or
    "stretch" (resized to the target, aspect not kept)."""
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected one image [height, width, channels], got shape {list(image.shape)}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {quote(resize)}")
    pixels = image[..., :3] if image.shape[-1] >= 3 else image.expand(*image.shape[:2], 3)
    pixels = pixels.movedim(-1, 0)[None].float()                                   # [1, 3, H, W]
    if resize == "crop":
        top, left, crop_height, crop_width = center_crop_box(pixels.shape[-2], pixels.shape[-1], height, width)
        pixels = _resize(pixels[..., top:top + crop_height, left:left + crop_width], height, width)
    elif resize == "stretch":
        pixels = _resize(pixels, height, width)
    else:
        top, left, fitted_height, fitted_width = fit_box(pixels.shape[-2], pixels.shape[-1], height, width)
        canvas = pixels.new_zeros(1, 3, height, width)                             # black (0 in 0..1)
        canvas[..., top:top + fitted_height, left:left + fitted_width] = _resize(pixels, fitted_height, fitted_width)
        pixels = canvas
    return (2.0 * pixels - 1.0)[0]


def frame_mask(given_frames: list[int], latent_size: tuple[int, int, int], dtype=torch.float32,
               device=None) -> torch.Tensor:
    """The folded frame mask [1, 4, T', h, w]: 0 where the video frame c*T' + t is given, else 1.
    (4 channels because a latent frame holds TEMPORAL_FACTOR video frames.)"""
    latent_frames, rows, cols = latent_size
    per_frame = torch.ones(TEMPORAL_FACTOR * latent_frames, dtype=dtype, device=device)
    per_frame[given_frames] = 0
    # Resizing a per-frame constant to the latent grid keeps it constant, so broadcast instead.
    folded = per_frame.view(1, TEMPORAL_FACTOR, latent_frames, 1, 1)
    return folded.expand(1, TEMPORAL_FACTOR, latent_frames, rows, cols).contiguous()


def conditioning_indices(num_frames: int, has_last: bool) -> list[int]:
    return [0, num_frames - 1] if has_last else [0]


# ---------------------------------------------------------------------------------------------
# Frame indices: parsed from text, checked against the video's length

def parse_frame_indices(text: str) -> list[int]:
    """'0, 40, -1' → [0, 40, -1] (commas and/or spaces between whole numbers)."""
    tokens = [token for token in re.split(r"[,;\s]+", text.strip()) if token]
    if not tokens:
        raise ValueError("No frame indices given: write one per image, e.g. '0, 40, -1' (-1 = the last frame).")
    indices = []
    for token in tokens:
        try:
            indices.append(int(token))
        except ValueError:
            raise ValueError(f"{quote(token)} in the frame indices is not a whole number: write them like "
                             "'0, 40, -1' (-1 = the last frame).") from None
    return indices


def resolve_frame_indices(indices: list[int], num_frames: int) -> list[int]:
    """The frames (0..num_frames-1) that `indices` name, negative ones counted from the end;
    ValueError for an index outside the video or two indices naming one frame."""
    resolved, first_named = [], {}
    for index in indices:
        if not -num_frames <= index < num_frames:
            raise ValueError(f"Frame index {index} is outside the {num_frames}-frame video: use 0 to {num_frames - 1}, "
                             f"or -{num_frames} to -1 counted from the end (-1 = the last frame).")
        frame = index % num_frames
        if frame in first_named:
            earlier = first_named[frame]
            same = f"index {index} twice" if index == earlier else f"indices {earlier} and {index}"
            raise ValueError(f"Two images on frame {frame} ({same}): each frame takes at most one image. "
                             "Remove one, or give it another index.")
        first_named[frame] = index
        resolved.append(frame)
    return resolved


def continuation_frames(previous: torch.Tensor, overlap: int, num_frames: int) -> dict[int, torch.Tensor]:
    """{0: previous[-overlap], …, overlap-1: previous[-1]}: the last `overlap` frames of an IMAGE
    batch [N, H, W, C] (a previous clip) as the first frames of a `num_frames`-frame clip — the
    training's continuation masks."""
    count = previous.shape[0]
    if overlap < 1:
        raise ValueError(f"overlap_frames must be at least 1 (got {overlap}): the new clip continues from that many "
                         "frames of the previous one.")
    if overlap > count:
        raise ValueError(f"overlap_frames ({overlap}) is larger than the previous clip, which holds {count} frames: "
                         f"use at most {count}.")
    if overlap >= num_frames:
        raise ValueError(f"overlap_frames ({overlap}) must be smaller than the new clip's length ({num_frames}), "
                         f"which would leave no frame to generate: use at most {num_frames - 1}, or a longer clip.")
    return {index: previous[count - overlap + index] for index in range(overlap)}
