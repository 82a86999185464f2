"""Tiled VAE decode: the package's (allegro.vae_tiling.tiled_decode with the tiles 'Allegro VAE
Decode' uses by default) vs diffusers' AutoencoderKLAllegro.tiled_decode, at Allegro's full latent
[1, 4, 22, 90, 160] (88 x 720 x 1280 pixels), fp32 on CPU.

The VAE has the released architecture and tile geometry (24 x 320 x 320 pixel tiles, overlaps
8 / 120 / 80) with fewer channels, random weights shared by both. Each decode runs in its own fresh
subprocess, alternating, so its peak RSS is its own. "Holes" are output pixels never written
(exactly 0 in every channel): diffusers places no tile past its last whole stride.

    .venv/bin/python -m bench.bench_vae_decode                          # full size, 2 reps (~35 min)
    .venv/bin/python -m bench.bench_vae_decode --size 40x480x640 --reps 1   # a size diffusers leaves holes at
    .venv/bin/python -m bench.bench_vae_decode --size 24x240x320 --sample-size 240 --channels 4,8,8,8 --reps 1  # smoke

Full size takes ~5-8 min per decode on 2 cores, so the default is 2 reps (3 would pass 25 min).
"""
import argparse
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench import common
from bench.timing import alternate, child_result, gib, markdown_table, measure, median, report, run_child

JOBS = ("ours", "diffusers")


def parse_size(text: str) -> tuple[int, int, int]:
    frames, height, width = (int(v) for v in text.lower().split("x"))
    if frames % 4 or height % 8 or width % 8:
        raise argparse.ArgumentTypeError("size must be FRAMESxHEIGHTxWIDTH with frames % 4 == 0, sides % 8 == 0")
    return frames, height, width


def build_vaes(channels, groups, sample_size: int, implementation: str):
    from diffusers import AutoencoderKLAllegro
    from allegro.config import vae_config_from_dict
    from allegro.vae import AllegroVAE
    torch.manual_seed(0)
    reference = AutoencoderKLAllegro(block_out_channels=channels, norm_num_groups=groups, sample_size=sample_size).eval()
    if implementation == "diffusers":
        reference.enable_tiling()
        return reference
    ours = AllegroVAE(vae_config_from_dict(dict(reference.config))).eval()
    ours.load_state_dict(reference.state_dict())
    return ours


def tile_counts(size, sample_size: int) -> dict[str, int]:
    """Tiles each implementation decodes (released geometry: 24x320x320 pixels, strides 16/200/240)."""
    from dataclasses import replace

    from allegro.config import RELEASE_VAE
    from allegro.vae_tiling import TileSettings, axis_tiles
    config = replace(RELEASE_VAE, sample_size=sample_size)
    tile, overlap = TileSettings.from_config(config).in_latent_units(config)
    latent = (size[0] // 4, size[1] // 8, size[2] // 8)
    ours = math.prod(len(axis_tiles(n, t, o)) for n, t, o in zip(latent, tile, overlap))
    theirs = math.prod(max(0, (n - t) // (t - o) + 1) for n, t, o in zip(latent, tile, overlap))
    return {"ours": ours, "diffusers": theirs}


def child(args):
    from allegro.vae_tiling import TileSettings, tiled_decode
    torch.set_grad_enabled(False)
    frames, height, width = args.size
    vae = build_vaes(args.channels, args.groups, args.sample_size, args.child)
    latent = torch.randn(1, 4, frames // 4, height // 8, width // 8, generator=torch.Generator().manual_seed(1))
    if args.child == "ours":
        tiles = TileSettings.from_config(vae.config)          # the node's defaults for the released config
        video, stats = measure(lambda: tiled_decode(vae, latent, tiles))                   # [B, C, T, H, W]
    else:
        video, stats = measure(lambda: vae.decode(latent).sample)
        video = video.permute(0, 2, 1, 3, 4)                                                # [B, T, C, ...] → [B, C, T, ...]
    holes = 1.0 - (video != 0).any(dim=1).float().mean().item()
    # A strided sample of the output, for the parent to compare the two decodes.
    save_file({"video": video[0, :, ::4, ::8, ::8].contiguous()}, Path(args.out_dir) / f"vae_decode_{args.child}.safetensors")
    child_result({**stats, "holes": holes})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(88, 720, 1280), help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0, help="unrecorded rounds (each decode is a fresh process)")
    common.add_reduced_vae_arguments(parser)
    parser.add_argument("--child", choices=JOBS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args)

    size_arg = "x".join(map(str, args.size))
    child_args = common.child_arguments(args)
    jobs = {name: (lambda name=name: run_child(__spec__.name, child_args + ["--child", name])) for name in JOBS}
    results = alternate(jobs, args.reps, args.warmup)
    ours, theirs = (load_file(Path(args.out_dir) / f"vae_decode_{name}.safetensors")["video"] for name in JOBS)
    scale = theirs.abs().max().item()
    if median(results["diffusers"], "holes") == 0:
        exactness = (f"max abs difference between the two decodes (every 4th frame, 8th row and column): "
                     f"{(ours - theirs).abs().max().item():.2e} (output max {scale:.2f}).")
    else:      # our extra border tiles change the blend next to the holes too: nothing to compare
        exactness = "not compared: at this size the tile grids differ (diffusers stops short, ours adds border tiles)."

    counts, reference_seconds = tile_counts(args.size, args.sample_size), median(results["diffusers"])
    rows = []
    for name in JOBS:
        seconds = median(results[name])
        peak = median(results[name], "peak_rss")
        extra = median([{"x": r["peak_rss"] - r["baseline_rss"]} for r in results[name]], "x")
        rows.append([name, counts[name], f"{seconds:.1f}", f"{seconds / reference_seconds:.2f}", gib(peak), gib(extra),
                     f"{100 * median(results[name], 'holes'):.2f}%"])
    table = markdown_table(["decode", "tiles", "median s", "ratio to diffusers", "peak RSS GiB (during decode)",
                            "of which decode GiB", "holes (never-written pixels)"], rows)
    latent_shape = [1, 4, args.size[0] // 4, args.size[1] // 8, args.size[2] // 8]
    body = [f"Latent {latent_shape} → video {size_arg} (frames x height x width), fp32, VAE channels "
            f"{args.channels} / {args.groups} groups (released: (128, 256, 512, 512) / 32), {args.sample_size}-px tiles "
            f"(released: 320), random weights; "
            f"{args.reps} alternating reps (medians), each decode in a fresh process. Goal: ratio ≤ 0.5, no holes.",
            table,
            f"Exactness: {exactness}"]
    report(f"VAE tiled decode, {size_arg}", body, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
