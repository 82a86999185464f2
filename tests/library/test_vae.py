"""The Allegro VAE equals diffusers' AutoencoderKLAllegro: same tensor names, same tile outputs (through
the CPU executor and through the plain modules), and the same tiled decode/encode wherever diffusers'
tile grid is complete; elsewhere every pixel is decoded, seams are blended and the border tiles are
no longer than needed; "auto" tiles fit the memory budget; the TI2V encode shortcut equals encoding the
full black video."""
from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKLAllegro

from allegro import vae_cpu
from allegro.config import RELEASE_VAE, VAEConfig, vae_config_from_dict
from allegro.vae import AllegroVAE
from allegro.vae_blocks import conv3d, temporal_pointwise_conv
from numerics import assert_measured, assert_relative
from allegro.vae_tiling import (TiledPlan, TileSettings, auto_tiles, axis_tiles, decode_tile_bytes, encode_conditioning_video,
                                fit_tiles, tiled_decode, tiled_encode)

# Tiles of 240 px: diffusers hard-codes 120/80 px overlaps, and only with tiles of 240 px or more do
# its blend ramps sum to 1 (with smaller tiles it over-weights overlaps by up to 8% — it never
# normalises, we always do; on the released 320-px geometry both are exactly 1).
TINY = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=240)


@pytest.fixture(scope="module")
def vaes():
    torch.manual_seed(0)
    reference = AutoencoderKLAllegro(**TINY).eval()
    reference.enable_tiling()
    ours = AllegroVAE(vae_config_from_dict(dict(reference.config))).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


RELEASE_TILES = TileSettings.from_config(RELEASE_VAE)


def test_tensor_names_equal_diffusers_at_full_size():
    with torch.device("meta"):
        reference, ours = AutoencoderKLAllegro(), AllegroVAE(VAEConfig())
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert len(mine) == 704 and sorted(mine) == sorted(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)


@pytest.mark.parametrize("executor", ["cpu", "modules"])
def test_single_tile_equals_diffusers(vaes, executor, monkeypatch):
    """The decoder through the channels-last CPU executor (what fp32 on CPU runs) and through the
    plain modules (GPUs, bf16/fp16); a batch of two decodes each sample alike.

    Spread (max relative error; ATEN_CPU_CAPABILITY default/avx2/avx512 × 1/2 threads): decode 5.3e-6 to
    1.1e-5 — the random-weight decoder amplifies float32 reordering — so the bound is 5e-5; encode 5.3e-7 to
    1.1e-6, bound 1e-5."""
    reference, ours = vaes
    if executor == "modules":
        monkeypatch.setattr(vae_cpu, "supported", lambda x: False)
    torch.manual_seed(1)
    latent, video = torch.randn(2, 4, 6, 30, 30), torch.rand(1, 3, 24, 240, 240) * 2 - 1
    with torch.no_grad():
        expected = reference.decoder(ours.prepare_latent(latent))
        assert_relative(ours.decode_tile(ours.prepare_latent(latent)), expected, 5e-5, "decode")
        assert_relative(ours.encode_moments(video), reference.encoder(video), 1e-5, "encode")


@pytest.mark.parametrize("per_frame,edges,mean", [(True, False, 0.5), (False, False, 0.5), (False, True, 0.5),
                                                  (True, False, 40.0), (False, True, 40.0)])
def test_cpu_group_norm_is_as_accurate_as_pytorchs(per_frame, edges, mean):
    """The executor's channels-last GroupNorm + SiLU against float64, beside PyTorch's own GroupNorm on
    the usual layout: per frame, over the video, over the video with its edge frames repeated (the
    temporal layers' padded input), and with a mean 40x the spread (where Σx² - n·mean² would cancel).
    Ours stays within 2x PyTorch's own error, or 5e-6 where that is smaller: measured 7.6e-7 to 5.3e-6 (absolute),
    the same under every kernel level and thread count (default/avx2/avx512, 1/2 threads)."""
    torch.manual_seed(7)
    frames, height, width, channels, groups = 5, 12, 16, 8, 4
    norm = torch.nn.GroupNorm(groups, channels, eps=1e-6)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    video = torch.randn(1, frames, height, width, channels) + mean                    # cl video [1, T, H, W, C]
    padded = torch.cat([video[:, :1], video, video[:, -1:]], dim=1) if edges else video
    usual = padded.permute(0, 4, 1, 2, 3)                                              # [1, C, T', H, W]
    if per_frame:
        usual = usual[0].transpose(0, 1)                                               # [T, C, H, W]
    with torch.no_grad():
        exact = torch.nn.functional.silu(torch.nn.functional.group_norm(usual.double(), groups, norm.weight.double(),
                                                                        norm.bias.double(), norm.eps))
        pytorch = torch.nn.functional.silu(norm(usual.contiguous()))
        ours = vae_cpu.group_norm(norm, video, per_frame=per_frame, silu=True, out=torch.empty_like(video), edges=edges)
    ours = ours.permute(0, 4, 1, 2, 3)
    if per_frame:
        ours = ours[0].transpose(0, 1)
    elif edges:
        exact, pytorch = exact[:, :, 1:-1], pytorch[:, :, 1:-1]
    pytorch_error = (pytorch.double() - exact).abs().max().item()
    assert_measured((ours.double() - exact).abs().max().item(), max(2 * pytorch_error, 5e-6), "abs error vs float64")


@pytest.mark.slow
def test_tiled_decode_and_encode_equal_diffusers_where_its_grid_is_complete(vaes):
    """40 x 360 x 400 pixels: 2 x 2 x 2 tiles (strides 16 / 120 / 160 px), all inside diffusers' grid — the
    smallest complete grid that blends an overlap on every axis. Spread across CPU kernels and thread counts:
    decode 7.0e-6 to 1.1e-5 (bound 5e-5), encode 5.3e-7 to 7.8e-7 (bound 1e-5)."""
    reference, ours = vaes
    torch.manual_seed(2)
    latent = torch.randn(1, 4, 10, 45, 50)
    with torch.no_grad():
        expected = reference.decode(latent).sample.permute(0, 2, 1, 3, 4)
        assert (expected != 0).float().mean() > 0.999                      # a real reference, no holes
        assert_relative(tiled_decode(ours, latent), expected, 5e-5, "decode")
        video = torch.rand(1, 3, 40, 360, 400) * 2 - 1
        assert_relative(tiled_encode(ours, video), reference.encode(video).latent_dist.mean, 1e-5, "encode")


def test_kernels_equal_plain_convolutions():
    """The executor's temporal pointwise kernel (plain and zero-padded) and its spatial conv3d equal torch's own
    convolutions. Measured spread (default/avx2/avx512 × 1/2 threads): temporal 1.1e-7 .. 1.4e-7, temporal
    zero-padded 1.1e-7 .. 1.4e-7, spatial 0; bound 1e-5 each (73x the largest: a float32 sum over the channels in
    another order)."""
    torch.manual_seed(3)
    x = torch.randn(2, 6, 9, 7, 5)
    conv = torch.nn.Conv3d(6, 4, (3, 1, 1))
    with torch.no_grad():
        assert_relative(temporal_pointwise_conv(x, conv.weight, conv.bias), conv(x), 1e-5, "temporal")
        zero_padded = torch.nn.Conv3d(6, 4, (3, 1, 1), padding=(1, 0, 0))
        zero_padded.load_state_dict(conv.state_dict())
        assert_relative(temporal_pointwise_conv(x, conv.weight, conv.bias, zero_padded=True), zero_padded(x), 1e-5,
                        "temporal zero-padded")
        spatial = torch.nn.Conv3d(6, 6, (3, 3, 3), padding=(0, 1, 1))
        assert_relative(conv3d(spatial, x), spatial(x), 1e-5, "spatial")


class OnesVAE:
    """Stands in for the network: every tile decodes to ones, so the blended output is the sum of
    the normalised blend weights — exactly 1 wherever some tile covers the pixel, 0 in a hole."""
    def __init__(self):
        self.config = VAEConfig()
        self.post_quant_conv = torch.nn.Conv2d(4, 4, 1)
        self.dtype = torch.float32
        self.decoded = 0
        self.voxels = 0

    def prepare_latent(self, latent):
        return latent

    def decode_tile(self, latent):
        self.decoded += 1
        self.voxels += latent[0, 0].numel()
        t, h, w = latent.shape[2:]
        return torch.ones(latent.shape[0], 3, 4 * t, 8 * h, 8 * w)


RELEASE_TILE, RELEASE_OVERLAP = (6, 40, 40), (2, 15, 10)        # latent units


@pytest.mark.parametrize("spread", [False, True])
@pytest.mark.parametrize("latent_shape,reference_holes", [
    ((22, 90, 160), False),     # 88 x 720 x 1280: the reference grid is complete
    ((10, 65, 70), False),      # 40 x 520 x 560: complete too
    ((22, 60, 104), True),      # 88 x 480 x 832
    ((10, 45, 80), True),       # 40 x 360 x 640
    ((10, 46, 80), True),       # 40 x 368 x 640 (the 40x360P model's size)
    ((23, 46, 80), True),       # 92 x 368 x 640 (89 frames decode to 92)
    ((1, 9, 13), True),         # smaller than one tile in every axis
])
def test_every_pixel_is_decoded_at_every_size(latent_shape, reference_holes, spread):
    """A VAE whose every tile decodes to ones gives ones everywhere (the blend weights add up to 1) at every size, with
    and without spread tiles, also where diffusers' grid leaves holes. Measured spread (default/avx2/avx512 × 1/2
    threads), absolute, across the sizes: 0 .. 2.38e-7 (each the same in every setting), 2 float32
    ulp of 1 at most; bound atol 1e-6 (torch.allclose, 4.2x the largest)."""
    vae = OnesVAE()
    tiles = replace(RELEASE_TILES, spread=spread)
    with torch.no_grad():
        video = tiled_decode(vae, torch.zeros(1, 4, *latent_shape), tiles)
    assert video.shape == (1, 3, 4 * latent_shape[0], 8 * latent_shape[1], 8 * latent_shape[2])
    assert_measured((video - 1).abs().max().item(), 1e-6, "abs vs ones")
    complete = all(len(axis_tiles(size, tile, overlap)) == (size - tile) // (tile - overlap) + 1 and (size - tile) % (tile - overlap) == 0
                   for size, tile, overlap in zip(latent_shape, RELEASE_TILE, RELEASE_OVERLAP) if size > tile)
    assert complete is not reference_holes or min(latent_shape) < 6


def test_border_tiles_decode_no_more_than_needed():
    """Where the reference grid stops short, a gap up to the overlap lengthens the grid's last tile, a
    longer one gets one tile that closes it, overlapping the grid's last tile by the usual overlap (not a
    whole tile flush with the border); complete grids are the reference's."""
    assert axis_tiles(46, 40, 15) == [(0, 46)]                           # 368 px: 6 rows past the grid
    assert axis_tiles(80, 40, 10) == [(0, 40), (30, 50)]                  # 640 px: 10 columns past it
    assert axis_tiles(60, 40, 10) == [(0, 40), (30, 30)]                  # 20 past it: more than the overlap
    assert axis_tiles(90, 40, 15) == [(0, 40), (25, 40), (50, 40)]        # 720 px: complete, the reference's
    assert axis_tiles(23, 6, 2) == [(0, 6), (4, 6), (8, 6), (12, 6), (16, 7)]
    assert axis_tiles(25, 6, 2) == [(0, 6), (4, 6), (8, 6), (12, 6), (16, 6), (20, 5)]
    assert axis_tiles(80, 40, 10, spread=True) == [(0, 40), (20, 40), (40, 40)]   # fewest tiles, spread evenly
    assert axis_tiles(30, 40, 10, spread=True) == [(0, 30)]
    # 40 x 368 x 640: the voxels decoded, against diffusers' 4 whole tiles (which leave 24% black).
    vae = OnesVAE()
    with torch.no_grad():
        tiled_decode(vae, torch.zeros(1, 4, 10, 46, 80))
    diffusers = 2 * 1 * 2 * 6 * 40 * 40
    assert vae.decoded == 4 and vae.voxels == 2 * 6 * 46 * (40 + 50)
    assert vae.voxels / diffusers < 1.3                      # a full border tile per axis: 3.0


def test_auto_tiles_fit_the_budget_and_decode_less():
    shape = (22, 90, 160)                                                       # 88 x 720 x 1280
    own_voxels = decoded_voxels(shape, RELEASE_TILES)
    previous = None
    for gib in (2, 4, 8, 32, 256):
        budget = int(gib * 2 ** 30)
        tiles = fit_tiles(RELEASE_VAE, shape, budget, 4)
        tile, overlap = tiles.in_latent_units(RELEASE_VAE)
        assert tiles.spread and overlap == RELEASE_OVERLAP
        assert decode_tile_bytes(RELEASE_VAE, tile, 4) <= budget
        voxels = decoded_voxels(shape, tiles)
        assert previous is None or voxels <= previous                # more memory: never more work
        previous = voxels
    assert tile == shape and voxels < own_voxels / 2.2              # everything fits: one tile, no overlap
    assert decode_tile_bytes(RELEASE_VAE, (6, 40, 40), 4) == 24 * 320 * 320 * (2 * 256 + 128) * 4
    # free memory less the decoded video and a quarter in reserve; nothing fits: the smallest tiles
    free = 16 * 2 ** 30
    video = 88 * 720 * 1280 * 3 * 4
    assert auto_tiles(RELEASE_VAE, shape, free, 4) == fit_tiles(RELEASE_VAE, shape, free * 3 // 4 - video, 4)
    assert auto_tiles(RELEASE_VAE, shape, free, 4, output_in_same_memory=False) == fit_tiles(RELEASE_VAE, shape, free * 3 // 4, 4)
    smallest = fit_tiles(RELEASE_VAE, shape, 1, 4)
    assert (smallest.frames, smallest.height, smallest.width) == (16, 240, 160)   # tiles at least twice their overlap


def decoded_voxels(shape, tiles: TileSettings) -> int:
    tile, overlap = tiles.in_latent_units(RELEASE_VAE)
    plan = TiledPlan.build(shape, tile, overlap, (1, 1, 1), tiles.spread)
    axes = [sum(length for _, length in axis) for axis in plan.tiles]
    return axes[0] * axes[1] * axes[2]


@pytest.mark.slow
def test_real_network_covers_odd_sizes(vaes):
    _, ours = vaes
    torch.manual_seed(4)
    for shape in ((1, 9, 13), (7, 33, 35)):
        with torch.no_grad():
            video = tiled_decode(ours, torch.randn(1, 4, *shape))
        assert torch.isfinite(video).all() and (video == 0).float().mean() < 1e-5


def calm_copy(vae: AllegroVAE, factor: float = 0.05) -> AllegroVAE:
    """The VAE with every residual branch of the decoder scaled by `factor`: the regime of a trained
    VAE, whose blocks make small updates to a residual stream (random weights make them huge)."""
    calm = AllegroVAE(vae.config).eval()
    calm.load_state_dict(vae.state_dict())
    with torch.no_grad():
        for name, module in calm.decoder.named_modules():
            if name.endswith(("conv2", "conv4", "to_out.0")):
                layer = module[-1] if isinstance(module, torch.nn.Sequential) else module
                layer.weight.mul_(factor)
                layer.bias.mul_(factor)
    return calm


@pytest.mark.slow
def test_tiled_decode_is_close_to_untiled(vaes):
    """Tiled vs one untiled pass. The decoder's temporal GroupNorms average over a tile, and its
    middle block attends over a tile's frame, so tiling changes the result by design (diffusers'
    tiled decode equals ours to 1e-5 above, so this gap is the reference's). How large it is depends
    on the weights: with random weights the decoder is chaotic and the gap is as large as the output
    (measured RMS 0.34 for an output std of 0.37 at 40 x 480 x 400); in the regime of a trained VAE
    (residual branches small, `calm_copy`) the measured gap is RMS 0.035 (12% of the output std) and
    max 0.98 (12% of the output range). The bounds allow 1.5x the measurement.
    Measured spread (default/avx2/avx512 × 1/2 threads): RMS gap / output std 0.117 in every setting, max gap /
    output range 0.122 in every setting: the kernels do not move it; bound 0.18 each, as above."""
    _, ours = vaes
    calm = calm_copy(ours)
    torch.manual_seed(5)
    latent = torch.randn(1, 4, 10, 60, 50)
    whole = TileSettings(frames=40, height=480, width=400, overlap_frames=0, overlap_height=0, overlap_width=0)
    with torch.no_grad():
        tiled, untiled = tiled_decode(calm, latent), tiled_decode(calm, latent, tiles=whole)
    difference = tiled - untiled
    assert_measured(difference.pow(2).mean().sqrt().item() / untiled.std().item(), 0.18, "RMS gap / output std")
    assert_measured(difference.abs().max().item() / (untiled.max() - untiled.min()).item(), 0.18,
                    "max gap / output range")


@pytest.mark.slow
@pytest.mark.parametrize("given", [[0], [0, 39]])
def test_conditioning_shortcut_equals_encoding_the_whole_black_video(vaes, given):
    """The TI2V conditioning shortcut (only the tiles that hold a given frame are encoded; an all-black tile row is
    encoded once) equals encoding the whole mostly-black video with diffusers. Measured spread (default/avx2/avx512
    × 1/2 threads): frame 0 given 7.4e-7 .. 9.1e-7, frames 0 and 39 given 5.3e-7 .. 8.2e-7; bound 1e-5 (11x the
    largest: the encoder's float32 sums, as the VAE encode bound above)."""
    reference, ours = vaes
    torch.manual_seed(6)
    frames = {index: torch.rand(3, 480, 400) * 2 - 1 for index in given}
    video = torch.zeros(1, 3, 40, 480, 400)
    for index, image in frames.items():
        video[0, :, index] = image
    calls = []
    original = ours.encode_moments
    ours.encode_moments = lambda x: calls.append(x.shape) or original(x)
    try:
        with torch.no_grad():
            shortcut = encode_conditioning_video(ours, frames, 40, 480, 400)
            full = reference.encode(video).latent_dist.mean
    finally:
        ours.encode_moments = original
    assert_relative(shortcut, full, 1e-5)
    # 2 temporal x 6 spatial tiles; with one given frame the second temporal row is all black: one encode.
    assert len(calls) == (6 + 1 if given == [0] else 12)


def test_progress_and_cancel_between_tiles():
    vae = OnesVAE()
    seen = []
    with torch.no_grad():
        tiled_decode(vae, torch.zeros(1, 4, 10, 60, 100), progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 12) and seen[-1] == (12, 12) and len(seen) == 13

    class Cancelled(Exception):
        pass

    def stop_after_three():
        if vae.decoded >= 3:
            raise Cancelled
    vae.decoded = 0
    with pytest.raises(Cancelled), torch.no_grad():
        tiled_decode(vae, torch.zeros(1, 4, 10, 60, 100), should_stop=stop_after_three)
    assert vae.decoded == 3


@pytest.mark.parametrize("settings,message", [
    (replace(RELEASE_TILES, frames=22), "tile frames must be a positive multiple of 4"),
    (replace(RELEASE_TILES, height=100), "tile height must be a positive multiple of 8"),
    (replace(RELEASE_TILES, overlap_width=320), "overlap in width must be a multiple of 8 pixels from 0 to 312"),
    (replace(RELEASE_TILES, overlap_frames=6), "overlap in frames must be a multiple of 4"),
])
def test_invalid_tile_settings_name_the_allowed_values(settings, message):
    with pytest.raises(ValueError, match=message):
        tiled_decode(OnesVAE(), torch.zeros(1, 4, 2, 8, 8), tiles=settings)


def test_fitted_and_halved_tiles_keep_the_tile_rule():
    """TileSettings is the one home of "overlap smaller than the tile, in whole latent units": settings made
    from others (smaller tiles keeping the VAE's own overlaps, an out-of-memory retry's halved tiles) follow it."""
    small = replace(RELEASE_TILES, frames=8, height=96, width=64).fitted(RELEASE_VAE)
    assert (small.overlap_frames, small.overlap_height, small.overlap_width) == (4, 88, 56)
    assert small.validate(RELEASE_VAE) is small
    odd = replace(RELEASE_TILES, overlap_height=121, overlap_width=79).fitted(RELEASE_VAE)
    assert (odd.overlap_height, odd.overlap_width) == (120, 72)          # rounded down to whole latent pixels
    assert RELEASE_TILES.fitted(RELEASE_VAE) == RELEASE_TILES            # valid settings are kept as they are
    halved = RELEASE_TILES.halved(RELEASE_VAE)
    assert (halved.height, halved.width, halved.overlap_height, halved.overlap_width) == (160, 160, 56, 40)
    assert halved.frames == RELEASE_TILES.frames and halved.validate(RELEASE_VAE) is halved
    tiles, steps = RELEASE_TILES, 0
    while (smaller := tiles.halved(RELEASE_VAE)) is not None:
        tiles, steps = smaller.validate(RELEASE_VAE), steps + 1
    assert (tiles.height, tiles.width, steps) == (64, 64, 3)             # stops at 8 latent pixels a side
