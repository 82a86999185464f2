"""Allegro-TI2V inputs: conditioning images and the frame mask, as the original pipeline makes them.

The original pipeline (the only TI2V reference) centre-crops each image to the target aspect,
resizes it (bilinear, antialiased, align_corners=True) and scales it to [-1, 1]; places it at
frame 0 (and the last frame) of an otherwise black video that the VAE encodes; and builds a
per-frame mask (0 = given, 1 = to generate) resized to the latent grid, whose frame axis is then
*viewed* as 4 channels x latent frames: channel c, latent frame t <-> video frame c*T' + t.

That view needs exactly 4*T' frames, so the original fails for lengths 4k + 1. Here such a clip
is handled as the 4*T' frames the VAE decodes (the last given frame stays at index length - 1;
the decode node crops the extra frames), which is the original's rule whenever it runs.
"""
import torch
import torch.nn.functional as F

from .config import TEMPORAL_FACTOR


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


def prepare_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """image [H, W, C] in 0..1 (ComfyUI IMAGE frame; C = 3, or 4 with alpha, which is dropped)
    → [3, height, width] in [-1, 1], centre-cropped to the target aspect and resized."""
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected one image [height, width, channels], got shape {list(image.shape)}")
    pixels = image[..., :3] if image.shape[-1] >= 3 else image.expand(*image.shape[:2], 3)
    pixels = pixels.movedim(-1, 0)[None].float()                                   # [1, 3, H, W]
    top, left, crop_height, crop_width = center_crop_box(pixels.shape[-2], pixels.shape[-1], height, width)
    pixels = pixels[..., top:top + crop_height, left:left + crop_width]
    pixels = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=True, antialias=True)
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
