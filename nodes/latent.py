"""Empty Allegro latent: the video size in pixels and frames → a zero LATENT of the right shape."""
import torch

import comfy.model_management

from ..allegro.geometry import check_video_size
from .memory import check_fits_in_memory

CATEGORY = "Allegro/latent"


class AllegroEmptyLatentVideo:
    DESCRIPTION = ("An empty Allegro video latent: 4 channels, frames/4 latent frames, height/8 x width/8. "
                   "Allegro was trained at 1280x720 with 88 frames (6 s at 15 fps) and at 40 frames.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("Zero latent [batch, 4, frames/4, height/8, width/8] for the Allegro sampler or KSampler.",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 1280, "min": 16, "max": 8192, "step": 16,
                              "tooltip": "Video width in pixels; a multiple of 16. Trained at 1280."}),
            "height": ("INT", {"default": 720, "min": 16, "max": 8192, "step": 16,
                               "tooltip": "Video height in pixels; a multiple of 16. Trained at 720."}),
            "length": ("INT", {"default": 88, "min": 4, "max": 1024, "step": 4,
                               "tooltip": "Frames; a multiple of 4 (or one more). 88 frames = 6 s at 15 fps."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Videos sampled together (each needs its own memory)."}),
        }}

    def generate(self, width, height, length, batch_size):
        size = check_video_size(width, height, length)
        check_fits_in_memory(size, batch_size)
        frames, rows, cols = size.latent_shape
        samples = torch.zeros([batch_size, 4, frames, rows, cols], device=comfy.model_management.intermediate_device())
        # The decode node crops back to `length` (odd lengths decode 3 extra frames, as in the reference).
        return ({"samples": samples, "allegro_num_frames": length},)
