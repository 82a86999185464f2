"""Tiled VAE decode and encode: the reference tile grid, without its holes, in bounded memory.

The reference (diffusers and the original repo) decodes tiles of the VAE config's size (24 frames x
320 x 320 pixels for the release, overlapping by 8 / 120 / 80, so placed every 16 frames / 200 rows /
240 columns) and blends overlaps with linear ramps, but places no tile past the last whole stride,
so the rest of the frame stays black unless (N-24)%16, (H-320)%200 and (W-320)%240 are all 0. Here
the same grid is used and, where it stops short, the gap is closed with the least extra work: a gap
no longer than the overlap by making the grid's last tile that much longer (no tile more; a tile's
memory grows by at most overlap / tile on that axis), a longer gap by one shorter tile that reaches
the border and overlaps the grid's last tile by the usual overlap (a full tile flush with the border
would decode up to a whole stride more). An axis shorter than a tile gets one tile of that length. Blend weights are divided by their sum (separable per axis, so
three small vectors), which is exactly 1 on the reference grid: results equal the reference there.

`TileSettings(spread=True)` places instead the fewest tiles of the given size that cover each axis
with at least the given overlap, evenly spaced; `fit_tiles` chooses such tiles, the largest that fit
a memory budget ("auto" tiles: fewer tiles, less overlap decoded twice, not the reference's result).

Tiles are decoded one at a time and added into the output, so memory is one tile's activations
plus the output itself, whatever the video length.
"""
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .config import VAEConfig
from .vae import AllegroVAE


@dataclass(frozen=True)
class TileSettings:
    """Tile size and overlap in pixels / frames. `from_config` gives a VAE's own (the reference
    tiling for the released config); nodes may pass others."""
    frames: int
    height: int
    width: int
    overlap_frames: int
    overlap_height: int
    overlap_width: int
    spread: bool = False          # True: fewest tiles spaced evenly; False: the reference grid + a border tile

    @classmethod
    def from_config(cls, config: VAEConfig) -> "TileSettings":
        t, h, w = config.tile_overlap
        return cls(config.tile_frames, config.sample_size, config.sample_size, t, h, w)

    def _axes(self, config: VAEConfig):
        """(name, tile size, overlap, latent unit) for frames, height and width."""
        temporal, spatial = config.temporal_factor, config.spatial_factor
        return (("frames", self.frames, self.overlap_frames, temporal),
                ("height", self.height, self.overlap_height, spatial),
                ("width", self.width, self.overlap_width, spatial))

    @staticmethod
    def largest_overlap(size: int, unit: int) -> int:
        """The tile rule: an overlap is whole latent units and smaller than its tile (size - unit at most)."""
        return max(size - unit, 0)

    def validate(self, config: VAEConfig) -> "TileSettings":
        """Raise ValueError naming the setting and its allowed values (whole latent units, overlap
        smaller than the tile); return self."""
        for name, size, overlap, unit in self._axes(config):
            word = "frames" if name == "frames" else "pixels"
            if size < unit or size % unit:
                raise ValueError(f"tile {name} must be a positive multiple of {unit} {word}, got {size}")
            if overlap < 0 or overlap % unit or overlap > self.largest_overlap(size, unit):
                raise ValueError(f"tile overlap in {name} must be a multiple of {unit} {word} from 0 to "
                                 f"{self.largest_overlap(size, unit)} (less than the tile), got {overlap}")
        return self

    def fitted(self, config: VAEConfig) -> "TileSettings":
        """These tiles with each overlap rounded down to whole latent units and cut below its tile (for
        settings made from others, e.g. smaller tiles keeping the VAE's own overlaps)."""
        return replace(self, **{f"overlap_{name}": min(overlap // unit * unit, self.largest_overlap(size, unit))
                                for name, size, overlap, unit in self._axes(config)})

    def halved(self, config: VAEConfig) -> "TileSettings | None":
        """Tiles of half the rows and columns (whole latent pixels, at least 8 a side) and half the
        overlaps; None once the tile is down to 8 latent pixels a side (what an out-of-memory retry uses)."""
        unit = config.spatial_factor
        smallest = 8 * unit
        if self.height <= smallest and self.width <= smallest:
            return None
        return replace(self, height=max(smallest, self.height // (2 * unit) * unit),
                       width=max(smallest, self.width // (2 * unit) * unit),
                       overlap_height=self.overlap_height // 2, overlap_width=self.overlap_width // 2).fitted(config)

    def in_latent_units(self, config: VAEConfig):
        """((tile t, h, w), (overlap t, h, w)) in latent units."""
        axes = self._axes(config)
        return tuple(size // unit for _, size, _, unit in axes), tuple(overlap // unit for _, _, overlap, unit in axes)


def axis_tiles(size: int, tile: int, overlap: int, spread: bool = False) -> list[tuple[int, int]]:
    """(start, length) of the tiles along one axis. Reference placement: a tile every tile - overlap
    from 0 while it fits; where that grid stops short of the border, a gap no longer than `overlap` is
    taken by the grid's last tile (longer by the gap: fewer, larger tiles cost least per pixel), a
    longer one by one shorter tile that reaches the border and overlaps the last tile by `overlap`. `spread`: the fewest tiles of length
    `tile` that cover the axis with neighbours overlapping by at least `overlap`, evenly spaced.
    One tile of the axis's length when it is not longer than a tile."""
    if size <= tile:
        return [(0, size)]
    stride = tile - overlap
    if spread:
        count = 1 + -(-(size - tile) // stride)                       # ceil: the fewest that cover
        return [(index * (size - tile) // (count - 1), tile) for index in range(count)]
    tiles = [(start, tile) for start in range(0, size - tile + 1, stride)]
    covered = tiles[-1][0] + tile
    gap = size - covered
    if 0 < gap <= overlap:                 # the last tile reaches the border: no tile more, at most `overlap` longer
        tiles[-1] = (tiles[-1][0], tile + gap)
    elif gap > overlap:
        length = gap + overlap                                         # < tile: the gap is below a stride
        tiles.append((size - length, length))
    return tiles


def decode_tile_bytes(config: VAEConfig, tile_latent, dtype_size: int) -> int:
    """Peak bytes one tile's decode needs: at the output resolution the decoder holds two
    activations as wide as the last upsampling block and one as wide as the output block (the
    widest moment: the first ResNet of the last block, with its input, its normed input and its
    first conv's output). Measured on CPU (bench_vae_decode --auto reports the peak)."""
    t, h, w = tile_latent
    pixels = t * config.temporal_factor * h * config.spatial_factor * w * config.spatial_factor
    channels = config.block_out_channels                   # encoder order: [0] is the decoder's output block
    return pixels * (2 * channels[min(1, len(channels) - 1)] + channels[0]) * dtype_size


def _axis_options(size: int, overlap: int, smallest: int) -> list[tuple[int, int]]:
    """(tile count, shortest tile that many cover the axis with) for counts 1, 2, ... while the tile
    stays longer than `overlap` and at least `smallest`."""
    options = [(1, size)]
    for count in range(2, size + 1):
        tile = -(-(size + (count - 1) * overlap) // count)
        if tile <= overlap or tile < smallest:
            break
        if tile < options[-1][1]:
            options.append((count, tile))
    return options


def fit_tiles(config: VAEConfig, latent_shape, budget_bytes: int, dtype_size: int,
              overlap: "TileSettings | None" = None) -> "TileSettings":
    """"auto" tiles for a latent of `latent_shape` (t, h, w): evenly spread tiles, overlapping by at
    least the VAE's own overlaps (or `overlap`'s), whose decode fits `budget_bytes`, chosen to decode
    the fewest latent voxels in all (larger tiles decode less overlap twice). Tiles are at least twice
    their overlap (and 8 latent pixels a side); when even the smallest does not fit, the smallest."""
    own = TileSettings.from_config(config) if overlap is None else overlap
    _, overlaps = own.in_latent_units(config)
    axes = [_axis_options(size, o, max(2 * o, floor)) for size, o, floor in zip(latent_shape, overlaps, (1, 8, 8))]
    best = None
    for count_t, tile_t in axes[0]:
        for count_h, tile_h in axes[1]:
            for count_w, tile_w in axes[2]:              # more columns of tiles: less memory, more work
                if decode_tile_bytes(config, (tile_t, tile_h, tile_w), dtype_size) <= budget_bytes:
                    work = (count_t * tile_t * count_h * tile_h * count_w * tile_w, count_t * count_h * count_w)
                    if best is None or work < best[0]:
                        best = (work, (tile_t, tile_h, tile_w))
                    break
    tile = best[1] if best is not None else tuple(axis[-1][1] for axis in axes)
    temporal, spatial = config.temporal_factor, config.spatial_factor
    return TileSettings(tile[0] * temporal, tile[1] * spatial, tile[2] * spatial,
                        min(own.overlap_frames, (tile[0] - 1) * temporal), min(own.overlap_height, (tile[1] - 1) * spatial),
                        min(own.overlap_width, (tile[2] - 1) * spatial), spread=True)


def auto_tiles(config: VAEConfig, latent_shape, free_bytes: int, dtype_size: int,
               overlap: "TileSettings | None" = None, output_in_same_memory: bool = True) -> "TileSettings":
    """"auto" tiles given the memory free: `fit_tiles` for three quarters of it, less the decoded video
    (float32) when that is kept in the same memory."""
    pixels = math.prod(size * factor for size, factor in
                       zip(latent_shape, (config.temporal_factor, config.spatial_factor, config.spatial_factor)))
    budget = free_bytes * 3 // 4 - (pixels * config.out_channels * 4 if output_in_same_memory else 0)
    return fit_tiles(config, latent_shape, budget, dtype_size, overlap)


def axis_weights(tiles: list[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """Per-tile blend weights in output units (`scale` output samples per tile unit): a linear ramp
    0 → 1 over the overlap with the previous tile and 1 → 0 over the overlap with the next, as the
    reference ramps (i/overlap and 1 - i/overlap)."""
    weights = []
    for index, (start, length) in enumerate(tiles):
        w = torch.ones(length * scale)
        if index > 0:
            previous_start, previous_length = tiles[index - 1]
            overlap = (previous_start + previous_length - start) * scale
            w[:overlap] *= torch.arange(overlap).float() / overlap
        if index < len(tiles) - 1:
            overlap = (start + length - tiles[index + 1][0]) * scale
            w[length * scale - overlap:] *= 1 - torch.arange(overlap).float() / overlap
        weights.append(w)
    return weights


@dataclass
class TiledPlan:
    """Tiles of a video axis by axis: `tiles[axis]` in input units, `weights[axis]` in output units."""
    tiles: tuple
    weights: tuple
    scales: tuple
    sums: tuple

    @classmethod
    def build(cls, sizes, tile, overlap, scales, spread: bool = False):
        tiles = tuple(axis_tiles(s, t, o, spread) for s, t, o in zip(sizes, tile, overlap))
        weights = tuple(axis_weights(axis, scale) for axis, scale in zip(tiles, scales))
        sums = []
        for axis, axis_w, size, scale in zip(tiles, weights, sizes, scales):
            total = torch.zeros(size * scale)
            for (start, _), w in zip(axis, axis_w):
                total[start * scale:start * scale + len(w)] += w
            sums.append(total)
        return cls(tiles, weights, tuple(scales), tuple(sums))

    def __len__(self):
        return len(self.tiles[0]) * len(self.tiles[1]) * len(self.tiles[2])

    def __iter__(self):
        """Yields (input slices, output slices, weight [t, h, w]) per tile."""
        for (t0, tn), wt in zip(self.tiles[0], self.weights[0]):
            for (h0, hn), wh in zip(self.tiles[1], self.weights[1]):
                for (w0, wn), ww in zip(self.tiles[2], self.weights[2]):
                    st, sh, sw = self.scales
                    source = (slice(t0, t0 + tn), slice(h0, h0 + hn), slice(w0, w0 + wn))
                    target = (slice(t0 * st, (t0 + tn) * st), slice(h0 * sh, (h0 + hn) * sh), slice(w0 * sw, (w0 + wn) * sw))
                    yield source, target, wt[:, None, None] * wh[None, :, None] * ww[None, None, :]

    def weight_sum(self) -> torch.Tensor:
        t, h, w = self.sums
        return t[:, None, None] * h[None, :, None] * w[None, None, :]


def _checkpoint(done, total, progress, should_stop):
    if should_stop is not None:
        should_stop()
    if progress is not None:
        progress(done, total)


@torch.no_grad()
def tiled_decode(vae: AllegroVAE, latent: torch.Tensor, tiles: TileSettings | None = None, output_device=None,
                 progress: Callable | None = None, should_stop: Callable | None = None) -> torch.Tensor:
    """latent [B, 4, t, h, w] in VAE space (already divided by the scale) → video [B, 3, 4t, 8h, 8w],
    float32 on `output_device` (default: the latent's device), raw decoder range (about [-1, 1]).
    `progress(done, total)` is called after each tile; `should_stop()` may raise to cancel."""
    config = vae.config
    tiles = (tiles or TileSettings.from_config(config)).validate(config)
    device = vae.post_quant_conv.weight.device
    output_device = latent.device if output_device is None else output_device
    tile, overlap = tiles.in_latent_units(config)
    scales = (config.temporal_factor, config.spatial_factor, config.spatial_factor)
    plan = TiledPlan.build(latent.shape[2:], tile, overlap, scales, tiles.spread)
    prepared = vae.prepare_latent(latent.to(device=device, dtype=vae.dtype))
    batch = latent.shape[0]
    shape = [batch, config.out_channels] + [size * scale for size, scale in zip(latent.shape[2:], scales)]
    video = torch.zeros(shape, dtype=torch.float32, device=output_device)
    _checkpoint(0, len(plan), progress, should_stop)
    for done, (source, target, weight) in enumerate(plan, start=1):
        decoded = vae.decode_tile(prepared[(slice(None), slice(None)) + source]).float()
        decoded *= weight.to(decoded.device)
        video[(slice(None), slice(None)) + target] += decoded.to(output_device)
        del decoded
        _checkpoint(done, len(plan), progress, should_stop)
    video /= plan.weight_sum().to(output_device)
    return video


def _encode_plan(config: VAEConfig, tiles: TileSettings, pixel_sizes):
    # Plan in latent units (pixel tiles are whole latent units), so tile starts stay aligned.
    tile, overlap = tiles.validate(config).in_latent_units(config)
    factors = (config.temporal_factor, config.spatial_factor, config.spatial_factor)
    latent_sizes = [size // factor for size, factor in zip(pixel_sizes, factors)]
    return TiledPlan.build(latent_sizes, tile, overlap, (1, 1, 1), tiles.spread), factors


@torch.no_grad()
def _tiled_encode(vae: AllegroVAE, pixel_sizes, make_tile: Callable, tiles: TileSettings | None, output_device,
                  progress, should_stop, batch: int) -> torch.Tensor:
    config = vae.config
    plan, factors = _encode_plan(config, tiles or TileSettings.from_config(config), pixel_sizes)
    device = vae.post_quant_conv.weight.device
    latent_sizes = [size // factor for size, factor in zip(pixel_sizes, factors)]
    moments = torch.zeros([batch, 2 * config.latent_channels] + latent_sizes, dtype=torch.float32, device=device)
    _checkpoint(0, len(plan), progress, should_stop)
    for done, (source, target, weight) in enumerate(plan, start=1):
        pixel_slices = tuple(slice(s.start * f, s.stop * f) for s, f in zip(source, factors))
        encoded = make_tile(pixel_slices).float()
        moments[(slice(None), slice(None)) + target] += encoded * weight.to(device)
        _checkpoint(done, len(plan), progress, should_stop)
    moments /= plan.weight_sum().to(device)
    mean = vae.moments_to_mean(moments.to(vae.dtype)).float()
    return mean.to(output_device if output_device is not None else device)


def fit_to_units(video: torch.Tensor, config: VAEConfig) -> torch.Tensor:
    """[B, C, N, H, W] → whole latent units: frames up to the next multiple of the temporal factor
    by repeating the last frame (geometry's frame rule), rows and columns short of a latent pixel
    dropped (sizes the DiT takes are multiples of 16 anyway)."""
    n, h, w = video.shape[2:]
    video = video[:, :, :, :h - h % config.spatial_factor, :w - w % config.spatial_factor]
    missing = -n % config.temporal_factor
    if missing and n:
        video = torch.cat([video, video[:, :, -1:].expand(-1, -1, missing, -1, -1)], dim=2)
    return video


def tiled_encode(vae: AllegroVAE, video: torch.Tensor, tiles: TileSettings | None = None, output_device=None,
                 progress=None, should_stop=None) -> torch.Tensor:
    """video [B, 3, N, H, W] in [-1, 1] → posterior mean [B, 4, ceil(N/4), H/8, W/8] in VAE space
    (not multiplied by the scale); see `fit_to_units` for lengths and sizes off the latent grid."""
    config = vae.config
    video = fit_to_units(video, config)
    if min(video.shape[2:]) == 0:
        raise ValueError(f"Allegro's VAE needs at least one frame of {config.spatial_factor}x"
                         f"{config.spatial_factor} pixels to encode")
    device, dtype = vae.post_quant_conv.weight.device, vae.dtype

    def make_tile(slices):
        return vae.encode_moments(video[(slice(None), slice(None)) + slices].to(device=device, dtype=dtype))

    return _tiled_encode(vae, video.shape[2:], make_tile, tiles, output_device, progress, should_stop, video.shape[0])


def encode_conditioning_video(vae: AllegroVAE, frames: dict[int, torch.Tensor], num_frames: int, height: int,
                              width: int, tiles: TileSettings | None = None, output_device=None, progress=None,
                              should_stop=None) -> torch.Tensor:
    """The posterior mean [1, 4, num_frames/4, height/8, width/8] of a video that is black (0 in
    [-1, 1] terms) except `frames` ({index: [3, height, width] in [-1, 1]}) — equal to tiled-encoding
    that whole video, as the TI2V reference does, but without building it, and running the encoder
    only once for all tiles whose input is entirely zero (the network is translation-equivariant
    and a zero tile's output depends only on the tile's shape)."""
    config = vae.config
    if num_frames % config.temporal_factor or height % config.spatial_factor or width % config.spatial_factor:
        raise ValueError(f"the conditioning video must have whole latent units: {num_frames} frames, {height}x{width}")
    device, dtype = vae.post_quant_conv.weight.device, vae.dtype
    given = {index % num_frames: image.to(device=device, dtype=dtype) for index, image in frames.items()}
    zero_tiles: dict[tuple, torch.Tensor] = {}

    def make_tile(slices):
        t, h, w = slices
        inside = [index for index in given if t.start <= index < t.stop]
        shape = (1, 3, t.stop - t.start, h.stop - h.start, w.stop - w.start)
        if not inside:
            if shape not in zero_tiles:
                zero_tiles[shape] = vae.encode_moments(torch.zeros(shape, device=device, dtype=dtype))
            return zero_tiles[shape]
        tile = torch.zeros(shape, device=device, dtype=dtype)
        for index in inside:
            tile[0, :, index - t.start] = given[index][:, h, w]
        return vae.encode_moments(tile)

    return _tiled_encode(vae, (num_frames, height, width), make_tile, tiles, output_device, progress, should_stop, 1)
