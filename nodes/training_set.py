"""Allegro Training Clip: one video clip (an IMAGE batch) and its caption, VAE-encoded once, added to a
training set for 'Allegro Train LoRA' (what a training set holds: adapters/training_set.py). Chain several to
train on several clips."""
from comfy_api.v0_0_2 import io

from ..adapters import checks
from ..adapters.training_set import caption_of, checked_set, make_clip

CATEGORY = "Allegro/training"
NODE = "Allegro Training Clip"
TRAINING_SET = io.Custom("ALLEGRO_TRAINING_SET")


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
        earlier = [] if training_set is None else checked_set(NODE, "training_set", training_set)
        checks.image(NODE, "frames", frames, "video frames")
        if not checks.is_finite(frames):
            raise ValueError(f"'{NODE}' got frames with {checks.count_non_finite(frames)}: check the node that made "
                             "them (a VAE decode of a broken latent?).")
        clip = make_clip(frames, caption_of(caption, "caption"), vae)
        return io.NodeOutput(earlier + [clip])
