"""Allegro-TI2V conditioning: first frame (and optional last frame) → both CONDITIONINGs carry the
VAE-encoded masked video and the folded frame mask, plus the LATENT to sample — the pattern of
ComfyUI's own image-to-video nodes, so the Allegro sampler and the stock KSampler both run it."""
import torch
from comfy_api.v0_0_2 import io

import comfy.model_management
import node_helpers

from ..allegro.config import LATENT_CHANNELS
from ..allegro.geometry import check_video_size, decoded_frames
from ..allegro.ti2v import conditioning_indices, frame_mask, prepare_image
from . import video_latent
from .latent import size_inputs
from .memory import check_fits_in_memory

CATEGORY = "Allegro/conditioning"
# Conditioning keys the model's concat_cond reads (comfy_model.AllegroBaseModel).
MASKED_VIDEO, FRAME_MASK, LATENT_SCALE_KEY = "allegro_masked_video", "allegro_frame_mask", "allegro_latent_scale"


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


class AllegroTI2VConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_TI2VConditioning",
            display_name="Allegro TI2V Conditioning",
            category=CATEGORY,
            description="Image-to-video for Allegro-TI2V: the first frame, and optionally the last, become the video's "
                        "start (and end). Images of any size are centre-cropped to the video's aspect and resized, as "
                        "the reference does, then VAE-encoded with the posterior mean (deterministic; the reference "
                        "draws a random sample). Feed the three outputs to the sampler; use CFG 8 as the reference.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="From 'Allegro Text Encode'."),
                io.Conditioning.Input("negative", tooltip="From 'Allegro Text Encode'."),
                io.Vae.Input("vae", tooltip="The Allegro VAE (encodes the conditioning frames)."),
                io.Image.Input("first_frame", tooltip="The video's first frame: one image of any size (alpha is "
                                                      "ignored)."),
                *size_inputs("Frames (a multiple of 4, or one more); 88 = 6 s at 15 fps as trained."),
                io.Image.Input("last_frame", optional=True,
                               tooltip="Optional: the video's last frame (first-and-last-frame mode)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the image frames."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the same image "
                                                                        "frames (both CFG branches see them, as in the "
                                                                        "reference)."),
                io.Latent.Output(display_name="latent", tooltip="The empty latent to sample, of the chosen size and "
                                                                "length."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, first_frame, width, height, length, last_frame=None) -> io.NodeOutput:
        first, last = single_image(first_frame, "first_frame"), single_image(last_frame, "last_frame")
        size = check_video_size(width, height, length)
        check_fits_in_memory(size)
        if not hasattr(vae, "encode_conditioning_frames"):
            raise ValueError("Allegro TI2V Conditioning needs the Allegro VAE ('Load Allegro VAE'), not another VAE.")
        latent_size = size.latent_shape
        indices = conditioning_indices(length, last is not None)
        images = [prepare_image(first, height, width)] + ([prepare_image(last, height, width)] if last is not None else [])
        # Encode the whole frames the latent decodes to (the frame rule), the last image at length - 1.
        masked_video = vae.encode_conditioning_frames(dict(zip(indices, images)), decoded_frames(latent_size[0]),
                                                      height, width)
        mask = frame_mask(indices, latent_size, device=masked_video.device)
        values = {MASKED_VIDEO: masked_video, FRAME_MASK: mask, LATENT_SCALE_KEY: vae.config.scaling_factor}
        positive = node_helpers.conditioning_set_values(positive, values)
        negative = node_helpers.conditioning_set_values(negative, values)
        latent = torch.zeros([1, LATENT_CHANNELS, *latent_size], device=comfy.model_management.intermediate_device())
        return io.NodeOutput(positive, negative, video_latent.make(latent, length))
