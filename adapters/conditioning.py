"""The TI2V conditioning keys: what the TI2V nodes put on both CONDITIONINGs and the model's concat_cond
(adapters/model.py, AllegroBaseModel) reads back: the VAE-encoded masked video, the folded frame mask and the
latent scale of the VAE that encoded it."""
import torch

import comfy.model_management
import node_helpers

from ..allegro.config import LATENT_CHANNELS
from ..allegro.geometry import check_video_size, decoded_frames
from ..allegro.ti2v import frame_mask, prepare_image
from . import video_latent
from .memory import check_fits_in_memory

MASKED_VIDEO, FRAME_MASK, LATENT_SCALE_KEY = "allegro_masked_video", "allegro_frame_mask", "allegro_latent_scale"


def with_image_frames(positive, negative, masked_video: torch.Tensor, mask: torch.Tensor, latent_scale: float):
    """(positive, negative), each carrying the masked video [B, 4, T', h, w] and mask [B, 1, T', h, w]:
    both CFG branches see the given frames, as in the reference."""
    values = {MASKED_VIDEO: masked_video, FRAME_MASK: mask, LATENT_SCALE_KEY: latent_scale}
    return (node_helpers.conditioning_set_values(positive, values),
            node_helpers.conditioning_set_values(negative, values))


def image_conditioning(positive, negative, vae, frames: dict[int, torch.Tensor], width: int, height: int,
                       length: int, resize: str, node: str) -> tuple:
    """frames: {video frame (0..length-1): IMAGE frame [H, W, C]} → (positive, negative, LATENT): what every TI2V
    node does once it knows which image goes on which frame."""
    size = check_video_size(width, height, length)
    check_fits_in_memory(size)
    if not hasattr(vae, "encode_conditioning_frames"):
        raise ValueError(f"'{node}' needs the Allegro VAE ('Load Allegro VAE'), not another VAE.")
    latent_size = size.latent_shape
    prepared = {index: prepare_image(image, height, width, resize) for index, image in frames.items()}
    # Encode the whole frames the latent decodes to (the frame rule): frame indices count the video's
    # `length` frames, the 4k + 1 lengths' extra decoded frames are never given.
    masked_video = vae.encode_conditioning_frames(prepared, decoded_frames(latent_size[0]), height, width)
    mask = frame_mask(sorted(prepared), latent_size, device=masked_video.device)
    positive, negative = with_image_frames(positive, negative, masked_video, mask, vae.config.scaling_factor)
    latent = torch.zeros([1, LATENT_CHANNELS, *latent_size], device=comfy.model_management.intermediate_device())
    return positive, negative, video_latent.make(latent, length)
