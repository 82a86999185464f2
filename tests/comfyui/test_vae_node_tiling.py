"""'Allegro VAE Decode' through ComfyUI with `tiling: auto`: the executor accepts the widget (old graphs
without it keep the reference tiling), auto decodes the whole video as one tile when memory allows
(equal to decoding it untiled) and, with little memory free, spreads the fewest tiles that fit."""
import sys

import pytest
import torch

from allegro.vae_tiling import TiledPlan, decode_tile_bytes
from numerics import assert_relative

DECODE = "AllegroVideo_VAEDecode"
VAE_FILE = "allegro_tiny_vae.safetensors"
FRAMES, HEIGHT, WIDTH = 24, 240, 320          # latent 6 x 30 x 40


@pytest.fixture
def decode_spy(comfy, monkeypatch):
    """The tiles every tiled decode of the package runs with, and the VAE adapter module (adapters/vae.py)."""
    node_module = sys.modules[comfy.node_types[DECODE].__module__]
    comfy_vae = sys.modules[node_module.__name__.rsplit(".", 2)[0] + ".adapters.vae"]
    used, original = [], comfy_vae.tiled_decode

    def spy(vae, latent, tiles, *args, **kwargs):
        used.append(tiles)
        return original(vae, latent, tiles, *args, **kwargs)
    monkeypatch.setattr(comfy_vae, "tiled_decode", spy)
    return used, comfy_vae


def tile_count(vae, latent_shape, tiles) -> int:
    tile, overlap = tiles.in_latent_units(vae.config)
    return len(TiledPlan.build(latent_shape, tile, overlap, (1, 1, 1), tiles.spread))


def test_tiling_widget_is_optional_and_defaults_to_the_reference(comfy):
    optional = comfy.object_info()[DECODE]["input"]["optional"]
    kind, spec = optional["tiling"][0], optional["tiling"][1]
    options = kind if isinstance(kind, (list, tuple)) else spec["options"]      # newer ComfyUI: ("COMBO", {options})
    assert list(options) == ["reference", "auto"] and spec["default"] == "reference"


def test_auto_tiles_decode_the_whole_video_when_it_fits(comfy, tiny_models, decode_spy):
    """With memory for the whole video, tiling 'auto' decodes it in one tile: what the reference decode gives. Measured
    spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0; bound 1e-5."""
    used, _ = decode_spy
    vae = comfy.call("AllegroVideo_VAELoader", vae_name=VAE_FILE, dtype="fp32")[0]
    wide = 384                                   # latent width 48: the 240-px grid stops 18 short (> the overlap)
    latent = torch.randn(1, 4, FRAMES // 4, HEIGHT // 8, wide // 8, generator=torch.Generator().manual_seed(3))
    frames, _fps = comfy.call(DECODE, samples={"samples": latent}, vae=vae, tiling="auto")
    assert tile_count(vae, latent.shape[2:], used[-1]) == 1 and used[-1].spread
    with torch.no_grad():
        whole = vae.first_stage_model.decode_tile(vae.first_stage_model.prepare_latent(latent))
    expected = vae.process_output(whole)[0].movedim(0, -1)                      # [T, H, W, 3]
    assert frames.shape == (FRAMES, HEIGHT, wide, 3)
    assert_relative(frames, expected, 1e-5)
    reference, _ = comfy.call(DECODE, samples={"samples": latent}, vae=vae)      # old graphs: no 'tiling' input
    assert tile_count(vae, latent.shape[2:], used[-1]) == 2 and not used[-1].spread
    assert (reference - frames).abs().max().item() > 1e-3                       # another tiling, another result


def test_auto_tiles_fit_little_free_memory_in_a_graph(comfy, tiny_models, decode_spy, monkeypatch):
    """With memory for a 6 x 30 x 25 latent tile (and the video) the graph decodes 2 spread tiles."""
    used, comfy_vae = decode_spy
    vae = comfy.call("AllegroVideo_VAELoader", vae_name=VAE_FILE, dtype="fp32")[0]
    budget = decode_tile_bytes(vae.config, (6, 30, 25), 4)
    video = FRAMES * HEIGHT * WIDTH * 3 * 4
    monkeypatch.setattr(comfy_vae.mm, "get_free_memory", lambda *args, **kwargs: (budget + video) * 4 // 3 + 4)
    graph = {
        "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": VAE_FILE, "dtype": "fp32"}},
        "latent": {"class_type": "AllegroVideo_EmptyLatentVideo",
                   "inputs": {"width": WIDTH, "height": HEIGHT, "length": FRAMES, "batch_size": 1}},
        "decode": {"class_type": DECODE, "inputs": {"samples": ["latent", 0], "vae": ["vae", 0], "tiling": "auto"}},
    }
    result = comfy.run(graph, targets=["decode"])
    assert result.status == "success", result.error
    tiles = used[-1]
    unit, _ = tiles.in_latent_units(vae.config)
    assert tiles.spread and unit == (6, 30, 25) and decode_tile_bytes(vae.config, unit, 4) <= budget
    assert tile_count(vae, (FRAMES // 4, HEIGHT // 8, WIDTH // 8), tiles) == 2
    frames = result.output("decode")
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and torch.isfinite(frames).all()
