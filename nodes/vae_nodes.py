"""Allegro VAE decode / encode nodes: tiled like the reference (settable), every pixel decoded.

The tile widgets default to the loaded VAE's own tiling (its config: the reference's 24 x 320 x 320
with overlaps 8 / 120 / 80 for the release), the same tiles core VAE Decode uses."""
from dataclasses import replace

import torch
from comfy_api.v0_0_2 import io

from ..allegro.config import FRAME_RATE, TEMPORAL_FACTOR
from ..allegro.geometry import VideoSize
from ..allegro.quoting import quote
from ..allegro.vae_tiling import TileSettings
from ..adapters import checks, video_latent
from ..adapters.vae import auto_tiles
from ..adapters.memory import check_fits_in_memory

CATEGORY = "Allegro/vae"
OWN_SIZE, OWN_OVERLAP = 0, -1          # widget values meaning "the VAE's own setting"
TILINGS = ("reference", "auto")        # 'tiling' values: the tile widgets, or the largest tiles that fit free memory


def allegro_vae(vae, node: str):
    if not hasattr(vae, "decode_frames"):
        raise ValueError(f"'{node}' needs the Allegro VAE from 'Load Allegro VAE'; this VAE is another model's.")
    return vae


def tile_inputs() -> list:
    size = dict(default=OWN_SIZE, min=OWN_SIZE, optional=True)
    overlap = dict(default=OWN_OVERLAP, min=OWN_OVERLAP, optional=True)
    return [
        io.Int.Input("tile_frames", max=256, step=4, **size,
                     tooltip="Frames per tile; 0 = the VAE's own (24 for the release). Fewer frames use less memory."),
        io.Int.Input("tile_size", max=2048, step=8, **size,
                     tooltip="Tile height and width in pixels; 0 = the VAE's own (320). Memory grows with its "
                             "square; the video's size does not matter."),
        io.Int.Input("overlap_frames", max=252, step=1, **overlap,
                     tooltip="Frames shared by neighbouring tiles and cross-faded, a multiple of 4; -1 = the VAE's "
                             "own (8)."),
        io.Int.Input("overlap_height", max=2040, step=1, **overlap,
                     tooltip="Rows shared by tiles above/below, cross-faded, a multiple of 8; -1 = the VAE's own (120)."),
        io.Int.Input("overlap_width", max=2040, step=1, **overlap,
                     tooltip="Columns shared by tiles left/right, cross-faded, a multiple of 8; -1 = the VAE's own (80)."),
    ]


def tiles_for(vae, tile_frames=OWN_SIZE, tile_size=OWN_SIZE, overlap_frames=OWN_OVERLAP,
              overlap_height=OWN_OVERLAP, overlap_width=OWN_OVERLAP) -> TileSettings:
    """The VAE's own tiles with each widget that is set in place of its setting (checked when used).
    An overlap left at the VAE's own is kept below a smaller tile the user chose."""
    sizes = {"frames": tile_frames, "height": tile_size, "width": tile_size}
    overlaps = {"overlap_frames": overlap_frames, "overlap_height": overlap_height, "overlap_width": overlap_width}
    tiles = replace(vae.default_tiles, **{name: value for name, value in sizes.items() if value != OWN_SIZE})
    return replace(tiles.fitted(vae.config), **{name: value for name, value in overlaps.items() if value != OWN_OVERLAP})


# --- finite checks (numbers in, tensors out) -------------------------------------------------------

def checked_tiles(node: str, tiles: dict) -> dict:
    """Tile widgets as whole numbers (NaN, infinity or text can arrive through a link or the API)."""
    return {name: checks.whole_number(node, name, value, OWN_OVERLAP if name.startswith("overlap") else OWN_SIZE)
            for name, value in tiles.items()}


def check_vae_output(vae, result, what: str, latent=None):
    """NaN/inf out of finite input: the VAE made them; a latent of absurd values or fp16 is the usual reason."""
    if checks.is_finite(result):
        return
    dtype = getattr(vae, "vae_dtype", None)
    implausible = None if latent is None else checks.implausible_values(latent)
    cause = (f"the latent: {implausible}; the node that made it is wrong" if implausible else
             "it runs in fp16, whose range the VAE's activations exceed: load it with dtype fp32 (the model card's "
             "advice) or bf16" if dtype == torch.float16 else
             "its weights or config.json (the weights were checked when loaded): download the VAE again")
    raise ValueError(f"The {what} hold {checks.count_non_finite(result)} although the input was finite: the VAE made "
                     f"them. Most likely cause: {cause}.")


class AllegroVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_VAEDecode",
            display_name="Allegro VAE Decode",
            category=CATEGORY,
            description="Decodes an Allegro latent to video frames, in tiles blended like the reference's (the VAE's "
                        "own 24x320x320 by default) but with every pixel decoded at every size. Frames go straight "
                        "into RIFE/FILM interpolation, upscalers, Video Combine or Create Video (use the fps output).",
            inputs=[io.Latent.Input("samples", tooltip="The sampled Allegro latent."),
                    io.Vae.Input("vae", tooltip="The Allegro VAE ('Load Allegro VAE')."),
                    *tile_inputs(),
                    io.Combo.Input("tiling", options=list(TILINGS), default=TILINGS[0], optional=True,
                                   tooltip="reference: the tiles set above (by default the VAE's own, as the "
                                           "reference decodes). auto: the largest tiles that fit the memory free "
                                           "now (VRAM on a GPU, RAM on CPU), spread evenly with the overlaps set "
                                           "above: fewer tiles, faster, but not the reference's exact result.")],
            outputs=[io.Image.Output(display_name="frames", tooltip="The video frames [frames, height, width, 3], 0..1."),
                     io.Float.Output(display_name="fps", tooltip="Allegro's frame rate, 15: connect it to Create "
                                                                 "Video's fps or Video Combine's frame_rate (x2 after "
                                                                 "2x frame interpolation).")],
        )

    @classmethod
    def execute(cls, samples, vae, tiling=TILINGS[0], **tiles) -> io.NodeOutput:
        latent = samples["samples"]
        if not video_latent.is_video_latent(latent):
            raise ValueError(f"'Allegro VAE Decode' takes an Allegro video latent {video_latent.SHAPE} as 'samples'; "
                             f"got shape {list(latent.shape)}. Decode other models' latents with their own VAE.")
        if video_latent.empty_axes(latent):
            raise ValueError(f"'Allegro VAE Decode' got an empty latent (shape {list(latent.shape)}: "
                             f"{video_latent.empty_axes(latent)}): there is nothing to decode. Check the node that made "
                             "it (a latent cut or batch selection that kept no frames).")
        vae = allegro_vae(vae, "Allegro VAE Decode")
        tiles = checked_tiles("Allegro VAE Decode", tiles)
        if not checks.is_finite(latent):
            raise ValueError(f"The latent to decode holds {checks.count_non_finite(latent)}: the node that made it "
                             "produced them (a sampler with NaN inputs, or a latent file). Nothing was decoded.")
        batch, _, frames, height, width = latent.shape        # a latent from elsewhere skipped the latent node's check
        check_fits_in_memory(VideoSize(width * vae.config.spatial_factor, height * vae.config.spatial_factor,
                                       frames * vae.config.temporal_factor), batch)
        if tiling not in TILINGS:
            raise ValueError(f"'Allegro VAE Decode' got tiling = {quote(tiling)}: it must be one of "
                             f"{', '.join(TILINGS)}.")
        settings = tiles_for(vae, **tiles)
        if tiling == "auto":
            settings = auto_tiles(vae, latent, overlap=settings)
        frames = vae.decode_frames(latent, settings)                                 # [B, 4T', H, W, 3]
        check_vae_output(vae, frames, "decoded frames", latent)
        frames = frames[:, :video_latent.video_frames(samples)]
        return io.NodeOutput(frames.reshape(-1, *frames.shape[2:]), FRAME_RATE)


class AllegroVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_VAEEncode",
            display_name="Allegro VAE Encode",
            category=CATEGORY,
            description="Encodes video frames (an IMAGE batch, e.g. from Load Video) into an Allegro latent for "
                        "video-to-video with denoise below 1. Uses the posterior mean. A length that is not a multiple "
                        f"of {TEMPORAL_FACTOR} is filled up by repeating the last frame (decoding gives back the "
                        "original length); pixels beyond a multiple of 8 are dropped.",
            inputs=[io.Image.Input("frames", tooltip="Video frames [frames, height, width, 3]; sides a multiple of 16 "
                                                     "for the sampler."),
                    io.Vae.Input("vae", tooltip="The Allegro VAE ('Load Allegro VAE')."),
                    *tile_inputs()],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="The video's latent; sample it with denoise < 1 to restyle it.")],
        )

    @classmethod
    def execute(cls, frames, vae, **tiles) -> io.NodeOutput:
        checks.image("Allegro VAE Encode", "frames", frames, "video frames")
        vae = allegro_vae(vae, "Allegro VAE Encode")
        smallest = vae.config.spatial_factor
        if min(frames.shape[1:3]) < smallest:
            raise ValueError(f"'Allegro VAE Encode' got frames of {frames.shape[2]}x{frames.shape[1]} pixels; the VAE "
                             f"needs at least {smallest}x{smallest} (it makes one latent pixel of {smallest}x{smallest}; "
                             "the sampler needs sides a multiple of 16). Resize the frames first.")
        tiles = checked_tiles("Allegro VAE Encode", tiles)
        if not checks.is_finite(frames):
            raise ValueError(f"The frames to encode hold {checks.count_non_finite(frames)}: the node that made them "
                             "produced them. Nothing was encoded.")
        latent = vae.encode_video(frames, tiles_for(vae, **tiles))
        check_vae_output(vae, latent, "encoded latent")
        return io.NodeOutput(video_latent.make(latent, frames.shape[0]))
