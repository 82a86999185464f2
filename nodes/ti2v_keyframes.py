"""Allegro-TI2V beyond first/last frame: images at any frames (keyframes), and continuing a video
from the last frames of a previous clip — the other masks Allegro-TI2V was trained with.

Keyframes come as one IMAGE batch plus a text list of frame indices ("0, 40, -1"): any number of
them from any IMAGE source (Load Image + Batch Images, a video's frames, a previous clip), one
widget to edit, and negative indices counted from the end like the reference's [0, -1]."""
from comfy_api.v0_0_2 import io

from ..allegro.ti2v import continuation_frames, parse_frame_indices, resolve_frame_indices
from ..allegro.quoting import quote
from ..adapters import checks
from .latent import size_inputs
from ..adapters.conditioning import image_conditioning
from .ti2v import CATEGORY, resize_input, single_image, ti2v_outputs

LENGTH_TOOLTIP = "Frames (a multiple of 4, or one more); 88 = 6 s at 15 fps as trained."


def keyframes(images, indices: str, length: int) -> dict:
    """{frame: image} from an IMAGE batch and its index list, checked against the clip's length."""
    checks.image("Allegro TI2V Keyframes", "images", images, "an IMAGE batch")
    wanted = parse_frame_indices(indices)
    if len(wanted) != images.shape[0]:
        raise ValueError(f"images holds {images.shape[0]} image(s) but indices lists {len(wanted)} frame(s) "
                         f"({quote(indices.strip())}): give exactly one frame index per image, in the batch's order.")
    return dict(zip(resolve_frame_indices(wanted, length), images))


class AllegroTI2VKeyframes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_TI2VKeyframes",
            display_name="Allegro TI2V Keyframes",
            category=CATEGORY,
            description="Image-to-video for Allegro-TI2V with images at any frames: image i of the batch becomes "
                        "frame indices[i] of the video (the original pipeline's conditional_images_indices). Any "
                        "frame may be given, each at most once: 0 is the first, -1 the last. Batch several images "
                        "with 'Batch Images'. Outputs as 'Allegro TI2V Conditioning'.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="From 'Allegro Text Encode'."),
                io.Conditioning.Input("negative", tooltip="From 'Allegro Text Encode'."),
                io.Vae.Input("vae", tooltip="The Allegro VAE (encodes the conditioning frames)."),
                io.Image.Input("images", tooltip="The keyframe images as one IMAGE batch, in the order of 'indices' "
                                                 "(e.g. Load Image -> Batch Images; batched images share one size)."),
                io.String.Input("indices", default="0, -1",
                                tooltip="One video frame per image, in the batch's order, separated by commas: "
                                        "0 to length-1, or negative from the end (-1 = the last frame). "
                                        "E.g. '0, 44, -1' for 3 images in an 88-frame video."),
                *size_inputs(LENGTH_TOOLTIP),
                resize_input(),
            ],
            outputs=ti2v_outputs(),
        )

    @classmethod
    def execute(cls, positive, negative, vae, images, indices, width, height, length, resize) -> io.NodeOutput:
        frames = keyframes(images, indices, length)
        return io.NodeOutput(*image_conditioning(positive, negative, vae, frames, width, height, length, resize,
                                                 "Allegro TI2V Keyframes"))


class AllegroTI2VContinue(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_TI2VContinue",
            display_name="Allegro TI2V Continue Video",
            category=CATEGORY,
            description="Continues a video with Allegro-TI2V: the last 'overlap_frames' frames of previous_frames "
                        "(e.g. the decoded previous clip) become the first frames of the new clip, which the model "
                        "carries on (the continuation masks of its training). Join the clips with 'Allegro Join "
                        "Clips' (same overlap_frames); chain more clips the same way for a longer video.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="From 'Allegro Text Encode' (the prompt for the new clip)."),
                io.Conditioning.Input("negative", tooltip="From 'Allegro Text Encode'."),
                io.Vae.Input("vae", tooltip="The Allegro VAE (encodes the conditioning frames)."),
                io.Image.Input("previous_frames", tooltip="The video to continue: an IMAGE batch of frames, e.g. "
                                                          "'Allegro VAE Decode' of the previous clip. Only its last "
                                                          "overlap_frames frames are used."),
                io.Int.Input("overlap_frames", default=4, min=1, max=1024,
                             tooltip="How many of the previous clip's last frames the new clip starts with (they "
                                     "overlap when joined). 4 = one latent frame; more carries the motion better "
                                     "but leaves fewer new frames."),
                *size_inputs(LENGTH_TOOLTIP),
                resize_input(),
                io.Image.Input("last_frame", optional=True,
                               tooltip="Optional: where the new clip should end (one image)."),
            ],
            outputs=ti2v_outputs(),
        )

    @classmethod
    def execute(cls, positive, negative, vae, previous_frames, overlap_frames, width, height, length, resize,
                last_frame=None) -> io.NodeOutput:
        node = "Allegro TI2V Continue Video"
        checks.image(node, "previous_frames", previous_frames, "video frames")
        overlap_frames = checks.whole_number(node, "overlap_frames", overlap_frames, 1)
        frames = continuation_frames(previous_frames, overlap_frames, length)
        last = single_image(last_frame, "last_frame", node)
        if last is not None:
            frames[length - 1] = last
        return io.NodeOutput(*image_conditioning(positive, negative, vae, frames, width, height, length, resize, node))
