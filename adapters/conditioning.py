"""The TI2V conditioning keys: what the TI2V nodes put on both CONDITIONINGs and the model's concat_cond
(adapters/model.py, AllegroBaseModel) reads back: the VAE-encoded masked video, the folded frame mask and the
latent scale of the VAE that encoded it."""
import torch

import node_helpers

MASKED_VIDEO, FRAME_MASK, LATENT_SCALE_KEY = "allegro_masked_video", "allegro_frame_mask", "allegro_latent_scale"


def with_image_frames(positive, negative, masked_video: torch.Tensor, mask: torch.Tensor, latent_scale: float):
    """(positive, negative), each carrying the masked video [B, 4, T', h, w] and mask [B, 1, T', h, w]:
    both CFG branches see the given frames, as in the reference."""
    values = {MASKED_VIDEO: masked_video, FRAME_MASK: mask, LATENT_SCALE_KEY: latent_scale}
    return (node_helpers.conditioning_set_values(positive, values),
            node_helpers.conditioning_set_values(negative, values))
