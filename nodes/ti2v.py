"""Allegro-TI2V conditioning: first frame (and optional last frame) → both CONDITIONINGs carry the
VAE-encoded masked video and the folded frame mask, plus the LATENT to sample — the pattern of
ComfyUI's own image-to-video nodes, so the Allegro sampler and the stock KSampler both run it."""
import torch

import comfy.model_management
import node_helpers

from ..allegro.geometry import check_video_size
from ..allegro.ti2v import conditioning_indices, frame_mask, prepare_image
from .memory import check_fits_in_memory

CATEGORY = "Allegro/conditioning"


def single_image(image: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """One IMAGE frame [H, W, C]; a batch of several is refused with what to do."""
    if image is None:
        return None
    if image.ndim != 4 or image.shape[0] < 1:
        raise ValueError(f"{name} must be an IMAGE [batch, height, width, channels]; got shape {list(image.shape)}.")
    if image.shape[0] != 1:
        raise ValueError(f"{name} holds {image.shape[0]} images; Allegro-TI2V takes exactly one per frame. "
                         "Pick one with 'Image From Batch' (or load a single image).")
    return image[0]


class AllegroTI2VConditioning:
    DESCRIPTION = ("Image-to-video for Allegro-TI2V: the first frame, and optionally the last, become the video's "
                   "start (and end). Images of any size are centre-cropped to the video's aspect and resized, as "
                   "the reference does, then VAE-encoded with the posterior mean (deterministic; the reference "
                   "draws a random sample). Feed the three outputs to the sampler; use CFG 8 as the reference.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    OUTPUT_TOOLTIPS = ("Positive conditioning with the image frames.", "Negative conditioning with the same image "
                       "frames (both CFG branches see them, as in the reference).",
                       "The empty latent to sample, of the chosen size and length.")
    FUNCTION = "condition"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive": ("CONDITIONING", {"tooltip": "From 'Allegro Text Encode'."}),
            "negative": ("CONDITIONING", {"tooltip": "From 'Allegro Text Encode'."}),
            "vae": ("VAE", {"tooltip": "The Allegro VAE (encodes the conditioning frames)."}),
            "first_frame": ("IMAGE", {"tooltip": "The video's first frame: one image of any size (alpha is ignored)."}),
            "width": ("INT", {"default": 1280, "min": 16, "max": 8192, "step": 16, "tooltip": "Video width; a multiple of 16."}),
            "height": ("INT", {"default": 720, "min": 16, "max": 8192, "step": 16, "tooltip": "Video height; a multiple of 16."}),
            "length": ("INT", {"default": 88, "min": 4, "max": 1024, "step": 4,
                               "tooltip": "Frames (a multiple of 4, or one more); 88 = 6 s at 15 fps as trained."}),
        }, "optional": {
            "last_frame": ("IMAGE", {"tooltip": "Optional: the video's last frame (first-and-last-frame mode)."}),
        }}

    def condition(self, positive, negative, vae, first_frame, width, height, length, last_frame=None):
        first, last = single_image(first_frame, "first_frame"), single_image(last_frame, "last_frame")
        size = check_video_size(width, height, length)
        check_fits_in_memory(size)
        if not hasattr(vae, "encode_conditioning_frames"):
            raise ValueError("Allegro TI2V Conditioning needs the Allegro VAE ('Load Allegro VAE'), not another VAE.")
        latent_size = size.latent_shape
        indices = conditioning_indices(length, last is not None)
        images = [prepare_image(first, height, width)] + ([prepare_image(last, height, width)] if last is not None else [])
        # The VAE turns 4 frames into each latent frame: encode the 4*T' frames it will decode.
        masked_video = vae.encode_conditioning_frames(dict(zip(indices, images)), 4 * latent_size[0], height, width)
        mask = frame_mask(indices, latent_size, device=masked_video.device)
        values = {"allegro_masked_video": masked_video, "allegro_frame_mask": mask}
        positive = node_helpers.conditioning_set_values(positive, values)
        negative = node_helpers.conditioning_set_values(negative, values)
        latent = torch.zeros([1, 4, *latent_size], device=comfy.model_management.intermediate_device())
        return positive, negative, {"samples": latent, "allegro_num_frames": length}
