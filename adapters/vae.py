"""The Allegro VAE as a real ComfyUI VAE (a comfy.sd.VAE subclass), so core VAE Decode / Encode /
Decode (Tiled) and VideoHelperSuite's latent inputs work on it, with the library's tiling: the
reference tile grid without its holes, progress per tile, cancel between tiles, and a retry with
smaller tiles when the GPU runs out of memory."""
import logging
from dataclasses import replace

import torch

import comfy.model_management as mm
import comfy.sd
import comfy.utils

from ..allegro.config import RELEASE_VAE, VAEConfig
from ..allegro.vae import AllegroVAE
from ..allegro import vae_tiling
from ..allegro.vae_tiling import TileSettings, encode_conditioning_video, tiled_decode, tiled_encode
from . import compat

LIVE_ACTIVATIONS = 5       # activation-sized tensors alive at once in a tile's full-resolution stage

# What comfy.sd.VAE.__init__ sets before it picks an architecture, in the newest release read (its
# defaults): used only if that constructor cannot be run without weights (see core_defaults).
FALLBACK_DEFAULTS = dict(pad_channel_value=None, disable_offload=False, not_video=False, size=None,
                         extra_1d_channel=None, crop_input=True, handles_tiling=False, format_encoded=None,
                         audio_sample_rate=44100)


def core_defaults(vae) -> None:
    """Give `vae` every default attribute the running ComfyUI's VAE constructor sets, whatever the
    release (pad_channel_value in 0.8.0; handles_tiling, format_encoded, audio_sample_rate later;
    whatever comes next): run that constructor on an empty state dict, where it sets them all and
    stops ("no VAE weights detected") before building a network. Should a release refuse that, the
    newest defaults known are set instead."""
    def expected(record):                         # what it logs here, as it should for a real loader
        return "No VAE weights" not in record.getMessage()
    logging.root.addFilter(expected)
    try:
        comfy.sd.VAE.__init__(vae, sd={})
    except Exception as error:                    # noqa: BLE001 - any refusal means: use the known defaults
        logging.debug("comfy.sd.VAE() without weights failed (%s); using the known defaults", error)
        for name, value in FALLBACK_DEFAULTS.items():
            setattr(vae, name, value)
    finally:
        logging.root.removeFilter(expected)


class AllegroComfyVAE(comfy.sd.VAE):
    # comfy.sd.VAE.__init__ builds ComfyUI's own architectures from a state dict; this takes its
    # defaults and sets the rest around the Allegro network, as that constructor does for its own.
    def __init__(self, model: AllegroVAE, dtype: torch.dtype, disable_dynamic: bool = False):
        core_defaults(self)
        self.first_stage_model = model.eval()
        self.config: VAEConfig = model.config
        self.device = mm.vae_device()
        self.vae_dtype = dtype
        self.output_device = mm.intermediate_device()
        compat.archive_dtypes(model)
        patcher_class = compat.patcher_class(disable_dynamic or self.disable_offload)
        self.patcher = patcher_class(model, load_device=self.device, offload_device=mm.vae_offload_device())
        self.latent_channels, self.latent_dim, self.output_channels = self.config.latent_channels, 3, 3
        t, s = self.config.temporal_factor, self.config.spatial_factor
        self.upscale_ratio = (lambda frames: frames * t, s, s)
        self.downscale_ratio = (lambda frames: frames // t, s, s)
        self.upscale_index_formula = self.downscale_index_formula = (t, s, s)
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.working_dtypes = [torch.bfloat16, torch.float16, torch.float32]
        self.default_tiles = TileSettings.from_config(self.config)
        self.memory_used_decode = lambda shape, dtype: self.tile_memory(self.default_tiles, dtype)
        self.memory_used_encode = lambda shape, dtype: self.tile_memory(self.default_tiles, dtype)

    def tile_memory(self, tiles: TileSettings, dtype) -> int:
        """Bytes one tile needs at the decoder's full-resolution stage: bounded by the tile, not the video."""
        pixels = tiles.frames * tiles.height * tiles.width
        return pixels * self.config.block_out_channels[0] * mm.dtype_size(dtype) * LIVE_ACTIVATIONS

    def _run_tiled(self, work, tiles: TileSettings, what: str):
        """Load the VAE, run `work(tiles, progress, should_stop)`; on out-of-memory halve the tiles."""
        while True:
            mm.load_models_gpu([self.patcher], memory_required=self.tile_memory(tiles, self.vae_dtype))
            bar = comfy.utils.ProgressBar(1)
            progress = lambda done, total: bar.update_absolute(done, total)     # noqa: E731
            try:
                return work(tiles, progress, mm.throw_exception_if_processing_interrupted)
            except mm.OOM_EXCEPTION:
                smaller = tiles.halved(self.config)
                if smaller is None:
                    raise
            mm.soft_empty_cache()
            logging.warning("Allegro VAE %s ran out of memory with %dx%dx%d tiles; retrying with %dx%dx%d.", what,
                            tiles.frames, tiles.height, tiles.width, smaller.frames, smaller.height, smaller.width)
            tiles = smaller

    def decode_frames(self, latent: torch.Tensor, tiles: TileSettings | None = None) -> torch.Tensor:
        """Raw latent [B, 4, t, h, w] → frames [B, 4t, 8h, 8w, 3] in 0..1 (ComfyUI IMAGE order)."""
        def work(tiles, progress, should_stop):
            return tiled_decode(self.first_stage_model, latent, tiles, self.output_device, progress, should_stop)
        video = self._run_tiled(work, tiles or self.default_tiles, "decode")
        return self.process_output(video).movedim(1, -1)

    def encode_video(self, pixels: torch.Tensor, tiles: TileSettings | None = None) -> torch.Tensor:
        """IMAGE frames [N, H, W, C] (or [B, N, H, W, C]) in 0..1 → raw latent mean [B, 4, ceil(N/4), H/8, W/8]."""
        video = pixels[..., :3]
        video = video.unsqueeze(0) if video.ndim == 4 else video
        video = self.process_input(video.movedim(-1, 1))                 # [B, 3, N, H, W]

        def work(tiles, progress, should_stop):
            return tiled_encode(self.first_stage_model, video, tiles, self.output_device, progress, should_stop)
        return self._run_tiled(work, tiles or self.default_tiles, "encode")

    def encode_conditioning_frames(self, frames: dict, num_frames: int, height: int, width: int) -> torch.Tensor:
        """TI2V: the posterior mean of a black video holding `frames` ({index: [3, H, W] in [-1, 1]})."""
        def work(tiles, progress, should_stop):
            return encode_conditioning_video(self.first_stage_model, frames, num_frames, height, width, tiles,
                                             self.output_device, progress, should_stop)
        return self._run_tiled(work, self.default_tiles, "encode")

    # --- comfy.sd.VAE interface ------------------------------------------------------------
    def decode(self, samples_in, vae_options={}):
        return self.decode_frames(samples_in)

    def decode_tiled(self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        return self.decode_frames(samples, comfy_tiles(self.default_tiles, self.config, tile_x, tile_y, overlap, tile_t, overlap_t))

    def encode(self, pixel_samples, not_video=None):
        return self.encode_images(pixel_samples, not_video)

    def encode_tiled(self, pixel_samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None,
                     not_video=None):
        # ComfyUI passes pixels here (latent units to decode_tiled).
        t, s = self.config.temporal_factor, self.config.spatial_factor
        in_latent = {k: (v // (t if k.endswith("_t") else s) if v is not None else None)
                     for k, v in dict(tile_x=tile_x, tile_y=tile_y, overlap=overlap, tile_t=tile_t, overlap_t=overlap_t).items()}
        return self.encode_images(pixel_samples, not_video, comfy_tiles(self.default_tiles, self.config, **in_latent))

    def encode_images(self, pixels, not_video=None, tiles: TileSettings | None = None) -> torch.Tensor:
        """ComfyUI's meaning of `not_video` (a keyword of newer releases; None: the VAE's own, False):
        an IMAGE batch [N, H, W, C] is the frames of one video, or with not_video N one-frame videos."""
        if self.not_video if not_video is None else not_video:
            return self.encode_video(pixels[:, None] if pixels.ndim == 4 else pixels, tiles)   # [N, 4, 1, h, w]
        return self.encode_video(pixels, tiles)

    def get_sd(self):
        return self.first_stage_model.state_dict()


def comfy_tiles(default: TileSettings, config: VAEConfig, tile_x, tile_y, overlap, tile_t, overlap_t) -> TileSettings:
    """Core 'VAE Decode (Tiled)' settings (latent units) as TileSettings (pixels and frames), each one left
    out kept at `default`'s; overlaps cut below their tiles (TileSettings.fitted)."""
    t, s = config.temporal_factor, config.spatial_factor
    given = {"width": tile_x and tile_x * s, "height": (tile_y or tile_x) and (tile_y or tile_x) * s,
             "overlap_height": overlap and overlap * s, "overlap_width": overlap and overlap * s,
             "frames": tile_t and tile_t * t, "overlap_frames": overlap_t and overlap_t * t}
    return replace(default, **{name: value for name, value in given.items() if value is not None}).fitted(config)


def build_vae(config: VAEConfig, state_dict: dict, dtype: torch.dtype, disable_dynamic: bool = False) -> AllegroComfyVAE:
    with torch.device("meta"):
        model = AllegroVAE(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"The VAE weights do not match its config: missing {missing[:6]}, unexpected {unexpected[:6]}")
    if config.scaling_factor != RELEASE_VAE.scaling_factor:
        logging.warning("This Allegro VAE's config gives latent scale %g (the release's is %g). A model loaded from the "
                        "same hub folder samples at that scale; a model from elsewhere does not match it.",
                        config.scaling_factor, RELEASE_VAE.scaling_factor)
    return AllegroComfyVAE(model.to(dtype), dtype, disable_dynamic)


def auto_tiles(vae: AllegroComfyVAE, latent: torch.Tensor, overlap: TileSettings) -> TileSettings:
    """'auto' tiles for decoding `latent`: the largest (with `overlap`'s overlaps) whose decode fits the
    memory free on the VAE's device once the VAE is loaded — free VRAM on a GPU, available RAM on CPU
    (ComfyUI's own measure); the decoded video counts against it where it lands on the same device."""
    mm.load_models_gpu([vae.patcher])
    free = mm.get_free_memory(vae.device)
    same_memory = torch.device(vae.output_device).type == torch.device(vae.device).type
    return vae_tiling.auto_tiles(vae.config, tuple(latent.shape[2:]), free, mm.dtype_size(vae.vae_dtype), overlap,
                                 output_in_same_memory=same_memory)
