"""Allegro Training Clip: one video clip (an IMAGE batch) and its caption, VAE-encoded once, added to a
training set for 'Allegro Train LoRA'. Chain several to train on several clips.

A training set is a list of clips, each {"latent": the VAE latent [1, 4, T', h, w] as a LATENT holds
it, "frames": the clip's pixels [N, H, W, 3] uint8 (TI2V training encodes its masked videos from
them), "caption": (T5 hidden states [1, L, D], attention mask [1, L])}."""
import torch
from comfy_api.v0_0_2 import io

from ..allegro.config import TEMPORAL_FACTOR

CATEGORY = "Allegro/training"
TRAINING_SET = io.Custom("ALLEGRO_TRAINING_SET")


def caption_of(conditioning, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [1, L, D], mask [1, L]) of an 'Allegro Text Encode' conditioning."""
    if not conditioning:
        raise ValueError(f"'{name}' holds no conditioning: connect the positive output of 'Allegro Text Encode'.")
    states, extras = conditioning[0][0], conditioning[0][1]
    mask = extras.get("attention_mask")
    if mask is None:
        raise ValueError(f"'{name}' has no T5 attention mask, which Allegro trains with: encode the caption with "
                         "'Allegro Text Encode'.")
    return states[:1], mask[:1]


def check_clip_shape(count: int, height: int, width: int, vae) -> None:
    """The frame count and size a training clip must have (the VAE's and the DiT's strides)."""
    if count % TEMPORAL_FACTOR:
        raise ValueError(f"The clip has {count} frames; Allegro's VAE groups {TEMPORAL_FACTOR} frames into one latent "
                         f"frame, so training clips need a multiple of {TEMPORAL_FACTOR} (88 as trained): trim it to "
                         f"{count - count % TEMPORAL_FACTOR} frames.")
    factor = vae.config.spatial_factor * 2          # VAE downscale x the DiT's 2x2 patches
    if height % factor or width % factor:
        raise ValueError(f"The clip is {width}x{height}; width and height must be multiples of {factor} (VAE {factor // 2}"
                         f" x 2x2 patches): resize or crop it first (e.g. with 'Upscale Image').")


def make_clip(frames: torch.Tensor, caption, vae) -> dict:
    """A training-set entry from an IMAGE batch [N, H, W, C] in 0..1 and a conditioning."""
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"'frames' must be an IMAGE batch [frames, height, width, channels], got {list(frames.shape)}")
    check_clip_shape(*frames.shape[:3], vae)
    pixels = frames[..., :3].float()
    latent = vae.encode(pixels)
    return {"latent": latent.cpu(), "frames": (pixels * 255).round().to(torch.uint8).cpu(), "caption": caption}


class AllegroTrainingClip(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_TrainingClip",
            display_name="Allegro Training Clip",
            category=CATEGORY,
            description="Adds one clip (its frames, VAE-encoded once) and its caption to a training set for 'Allegro "
                        "Train LoRA'. Chain several nodes for several clips.",
            inputs=[
                io.Image.Input("frames", tooltip="The clip's frames (a multiple of 4; sides multiples of 16)."),
                io.Conditioning.Input("caption", tooltip="The clip's caption, from 'Allegro Text Encode' (positive; "
                                                         "use_template off, as in training)."),
                io.Vae.Input("vae", tooltip="The Allegro VAE."),
                TRAINING_SET.Input("training_set", optional=True, tooltip="A set to add this clip to."),
            ],
            outputs=[TRAINING_SET.Output(display_name="training_set", tooltip="The set with this clip added.")],
        )

    @classmethod
    def execute(cls, frames, caption, vae, training_set=None) -> io.NodeOutput:
        clip = make_clip(frames, caption_of(caption, "caption"), vae)
        return io.NodeOutput(list(training_set or []) + [clip])
