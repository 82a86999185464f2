"""Allegro-TI2V conditioning: images at chosen frames → both CONDITIONINGs carry the VAE-encoded
masked video and the folded frame mask, plus the LATENT to sample — the pattern of ComfyUI's own
image-to-video nodes, so the Allegro sampler and the stock KSampler both run it.

What every TI2V node does once it knows which image goes on which frame (this module's first/last-frame node,
the keyframe and continuation nodes in ti2v_keyframes.py) is adapters/conditioning.py's `image_conditioning`."""
import torch
from comfy_api.v0_0_2 import io

from ..allegro.ti2v import RESIZE_MODES, conditioning_indices
from ..adapters import checks
from ..adapters.conditioning import image_conditioning
from .latent import size_inputs

CATEGORY = "Allegro/conditioning"
RESIZE_TOOLTIP = ("How an image whose aspect differs from the video's becomes a frame. crop (the reference): centre "
                  "crop to the video's aspect, then resize. pad: the whole image, resized to fit, with black bars "
                  "(the video keeps them). stretch: resized to the video's size, distorted.")


def resize_input(optional: bool = False):
    return io.Combo.Input("resize", options=list(RESIZE_MODES), default="crop", optional=optional,
                          tooltip=RESIZE_TOOLTIP)


def ti2v_outputs() -> list:
    return [
        io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the image frames."),
        io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the same image frames "
                                                                "(both CFG branches see them, as in the reference)."),
        io.Latent.Output(display_name="latent", tooltip="The empty latent to sample, of the chosen size and length."),
    ]


def single_image(image: torch.Tensor | None, name: str, node: str) -> torch.Tensor | None:
    """One IMAGE frame [H, W, C]; an empty image or a batch of several is refused with what to do."""
    if image is None:
        return None
    checks.image(node, name, image)
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
                        "the reference does (or padded / stretched: 'resize'), then VAE-encoded with the posterior "
                        "mean (deterministic; the reference draws a random sample). Feed the three outputs to the "
                        "sampler; use CFG 8 as the reference. Frames anywhere: 'Allegro TI2V Keyframes'.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="From 'Allegro Text Encode'."),
                io.Conditioning.Input("negative", tooltip="From 'Allegro Text Encode'."),
                io.Vae.Input("vae", tooltip="The Allegro VAE (encodes the conditioning frames)."),
                io.Image.Input("first_frame", tooltip="The video's first frame: one image of any size (alpha is "
                                                      "ignored)."),
                *size_inputs("Frames (a multiple of 4, or one more); 88 = 6 s at 15 fps as trained."),
                io.Image.Input("last_frame", optional=True,
                               tooltip="Optional: the video's last frame (first-and-last-frame mode)."),
                # Last, so the widget values of workflows saved before it existed keep their places.
                resize_input(optional=True),
            ],
            outputs=ti2v_outputs(),
        )

    @classmethod
    def execute(cls, positive, negative, vae, first_frame, width, height, length, last_frame=None,
                resize="crop") -> io.NodeOutput:
        node = "Allegro TI2V Conditioning"
        first, last = single_image(first_frame, "first_frame", node), single_image(last_frame, "last_frame", node)
        images = [first] + ([last] if last is not None else [])
        frames = dict(zip(conditioning_indices(length, last is not None), images))
        return io.NodeOutput(*image_conditioning(positive, negative, vae, frames, width, height, length, resize,
                                                 node))
