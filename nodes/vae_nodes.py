"""Allegro VAE decode / encode nodes: tiled like the reference (settable), every pixel decoded."""
import torch

from ..allegro.vae_tiling import TileSettings

CATEGORY = "Allegro/vae"
FRAME_RATE = 15.0          # Allegro's videos are 88 frames at 15 fps (6 s)


def allegro_vae(vae, node: str):
    if not hasattr(vae, "decode_frames"):
        raise ValueError(f"'{node}' needs the Allegro VAE from 'Load Allegro VAE'; this VAE is another model's.")
    return vae


def video_latent(latent: dict, node: str) -> torch.Tensor:
    samples = latent["samples"]
    if samples.ndim != 5 or samples.shape[1] != 4:
        raise ValueError(f"'{node}' takes an Allegro video latent [batch, 4, frames, height/8, width/8] as 'samples'; "
                         f"got shape {list(samples.shape)}. Decode other models' latents with their own VAE.")
    return samples


def tile_inputs(frames_default=24, size_default=320):
    return {
        "tile_frames": ("INT", {"default": frames_default, "min": 4, "max": 256, "step": 4,
                                "tooltip": "Frames per tile (the reference uses 24). Fewer frames use less memory."}),
        "tile_size": ("INT", {"default": size_default, "min": 64, "max": 2048, "step": 8,
                              "tooltip": "Tile height and width in pixels (the reference uses 320). Memory grows with "
                                         "its square; the video's size does not matter."}),
        "overlap_frames": ("INT", {"default": 8, "min": 0, "max": 252, "step": 4,
                                   "tooltip": "Frames shared by neighbouring tiles and cross-faded (reference: 8)."}),
        "overlap_height": ("INT", {"default": 120, "min": 0, "max": 2040, "step": 8,
                                   "tooltip": "Rows shared by tiles above/below, cross-faded (reference: 120)."}),
        "overlap_width": ("INT", {"default": 80, "min": 0, "max": 2040, "step": 8,
                                  "tooltip": "Columns shared by tiles left/right, cross-faded (reference: 80)."}),
    }


def settings(tile_frames, tile_size, overlap_frames, overlap_height, overlap_width) -> TileSettings:
    return TileSettings(tile_frames, tile_size, tile_size, overlap_frames, overlap_height, overlap_width).validate()


class AllegroVAEDecode:
    DESCRIPTION = ("Decodes an Allegro latent to video frames, in tiles blended like the reference's (24x320x320 by "
                   "default) but with every pixel decoded at every size. Frames go straight into RIFE/FILM "
                   "interpolation, upscalers, Video Combine or Create Video (use the fps output).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    OUTPUT_TOOLTIPS = ("The video frames [frames, height, width, 3], 0..1.",
                       "Allegro's frame rate, 15: connect it to Create Video's fps or Video Combine's frame_rate "
                       "(x2 after 2x frame interpolation).")
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("LATENT", {"tooltip": "The sampled Allegro latent."}),
            "vae": ("VAE", {"tooltip": "The Allegro VAE ('Load Allegro VAE')."}),
        }, "optional": tile_inputs()}

    def decode(self, samples, vae, tile_frames=24, tile_size=320, overlap_frames=8, overlap_height=120, overlap_width=80):
        latent = video_latent(samples, "Allegro VAE Decode")
        tiles = settings(tile_frames, tile_size, overlap_frames, overlap_height, overlap_width)
        frames = allegro_vae(vae, "Allegro VAE Decode").decode_frames(latent, tiles)       # [B, T, H, W, 3]
        wanted = samples.get("allegro_num_frames")
        if wanted is not None and wanted < frames.shape[1]:
            frames = frames[:, :wanted]            # odd lengths decode up to 3 extra frames (as the reference)
        return frames.reshape(-1, *frames.shape[2:]), FRAME_RATE


class AllegroVAEEncode:
    DESCRIPTION = ("Encodes video frames (an IMAGE batch, e.g. from Load Video) into an Allegro latent for "
                   "video-to-video with denoise below 1. Uses the posterior mean; frames beyond a multiple of 4 "
                   "and pixels beyond a multiple of 8 are dropped.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The video's latent; sample it with denoise < 1 to restyle it.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "Video frames [frames, height, width, 3]; sides a multiple of 16 "
                                            "for the sampler."}),
            "vae": ("VAE", {"tooltip": "The Allegro VAE ('Load Allegro VAE')."}),
        }, "optional": tile_inputs()}

    def encode(self, frames, vae, tile_frames=24, tile_size=320, overlap_frames=8, overlap_height=120, overlap_width=80):
        if frames.ndim != 4 or frames.shape[0] < 4:
            raise ValueError(f"'Allegro VAE Encode' needs at least 4 frames [frames, height, width, channels]; got "
                             f"shape {list(frames.shape)}.")
        tiles = settings(tile_frames, tile_size, overlap_frames, overlap_height, overlap_width)
        latent = allegro_vae(vae, "Allegro VAE Encode").encode_video(frames, tiles)
        return ({"samples": latent, "allegro_num_frames": frames.shape[0] - frames.shape[0] % 4},)
