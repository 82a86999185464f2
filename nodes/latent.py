"""Empty Allegro latent: the video size in pixels and frames → a zero LATENT of the right shape."""
import torch
from comfy_api.v0_0_2 import io

import comfy.model_management

from ..allegro.config import LATENT_CHANNELS
from ..allegro.geometry import check_video_size
from ..adapters import video_latent
from ..adapters.memory import check_fits_in_memory

CATEGORY = "Allegro/latent"


def size_inputs(length_tooltip: str) -> list:
    """width, height, length: the video size widgets of the latent and TI2V nodes."""
    return [
        io.Int.Input("width", default=1280, min=16, max=8192, step=16,
                     tooltip="Video width in pixels; a multiple of 16. Trained at 1280."),
        io.Int.Input("height", default=720, min=16, max=8192, step=16,
                     tooltip="Video height in pixels; a multiple of 16. Trained at 720."),
        io.Int.Input("length", default=88, min=4, max=1024, step=4, tooltip=length_tooltip),
    ]


class AllegroEmptyLatentVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_EmptyLatentVideo",
            display_name="Allegro Empty Latent Video",
            category=CATEGORY,
            description="An empty Allegro video latent: 4 channels, frames/4 latent frames, height/8 x width/8. "
                        "Allegro was trained at 1280x720 with 88 frames (6 s at 15 fps) and at 40 frames.",
            inputs=[*size_inputs("Frames; a multiple of 4 (or one more). 88 frames = 6 s at 15 fps."),
                    io.Int.Input("batch_size", default=1, min=1, max=64,
                                 tooltip="Videos sampled together (each needs its own memory).")],
            outputs=[io.Latent.Output(display_name="latent", tooltip=f"Zero latent {video_latent.SHAPE} for the "
                                                                     "Allegro sampler or KSampler.")],
        )

    @classmethod
    def execute(cls, width, height, length, batch_size) -> io.NodeOutput:
        size = check_video_size(width, height, length)
        check_fits_in_memory(size, batch_size)
        samples = torch.zeros([batch_size, LATENT_CHANNELS, *size.latent_shape],
                              device=comfy.model_management.intermediate_device())
        return io.NodeOutput(video_latent.make(samples, length))
