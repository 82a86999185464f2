"""Tiled VAE decode: the package's (allegro.vae_tiling.tiled_decode, with the tiles 'Allegro VAE Decode'
uses by default, and with its "auto" tiles) vs diffusers' AutoencoderKLAllegro.tiled_decode, fp32 on CPU.

The VAE has the released architecture and tile geometry (24 x 320 x 320 pixel tiles, overlaps 8 / 120 / 80)
with fewer channels, random weights shared by all. Every decode runs in its own fresh subprocess, the jobs
alternating (ours, diffusers, auto, ours, ...), so its peak RSS is its own and load that comes and goes hits
all alike. "Never-written pixels" are output pixels no tile wrote (exactly 0 in every channel): diffusers
places no tile past its last whole stride. "auto" tiles are the largest that fit the memory free when the
decode starts (psutil's available RAM, as the node measures it); its difference from the reference tiling
is reported as max abs difference and PSNR of the frames in 0..1.

    .venv/bin/python -m bench.bench_vae_decode                          # the three sizes below, 2 reps (~1.5 h)
    .venv/bin/python -m bench.bench_vae_decode --size 40x368x640 --reps 3   # one size
    .venv/bin/python -m bench.bench_vae_decode --size 24x240x320 --sample-size 240 --channels 4,8,8,8 --reps 1  # smoke

Sizes: 40x520x560 (diffusers' grid covers it exactly: the outputs must be equal), 40x368x640 (the 40x360P
model's size: diffusers leaves 24% black) and 88x720x1280 (Allegro's own, a complete grid).
"""
import argparse
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench import common
from bench.timing import alternate, child_result, gib, markdown_table, measure, median, report, run_child

JOBS = ("ours", "diffusers", "auto")
SIZES = ((40, 520, 560), (40, 368, 640), (88, 720, 1280))


def parse_size(text: str) -> tuple[int, int, int]:
    frames, height, width = (int(v) for v in text.lower().split("x"))
    if frames % 4 or height % 8 or width % 8:
        raise argparse.ArgumentTypeError("size must be FRAMESxHEIGHTxWIDTH with frames % 4 == 0, sides % 8 == 0")
    return frames, height, width


def size_name(size) -> str:
    return "x".join(map(str, size))


def build_vaes(channels, groups, sample_size: int, implementation: str, calm: float = 0.0):
    from diffusers import AutoencoderKLAllegro
    from allegro.config import vae_config_from_dict
    from allegro.vae import AllegroVAE
    torch.manual_seed(0)
    reference = AutoencoderKLAllegro(block_out_channels=channels, norm_num_groups=groups, sample_size=sample_size).eval()
    if calm:
        calm_residual_branches(reference.decoder, calm)
    if implementation == "diffusers":
        reference.enable_tiling()
        return reference
    ours = AllegroVAE(vae_config_from_dict(dict(reference.config))).eval()
    ours.load_state_dict(reference.state_dict())
    return ours


def calm_residual_branches(decoder, factor: float):
    """Scale the last layer of every residual branch of the decoder by `factor`: the regime of a trained
    VAE, whose blocks make small updates to a residual stream (random weights make them huge, and the
    decoder chaotic: then any change of tiling changes the whole output)."""
    with torch.no_grad():
        for name, module in decoder.named_modules():
            if name.endswith(("conv2", "conv4", "to_out.0")):
                layer = module[-1] if isinstance(module, torch.nn.Sequential) else module
                layer.weight.mul_(factor)
                layer.bias.mul_(factor)


def diffusers_tiles(latent, vae_config) -> int:
    """Tiles diffusers decodes: whole strides only."""
    from allegro.vae_tiling import TileSettings
    tile, overlap = TileSettings.from_config(vae_config).in_latent_units(vae_config)
    return math.prod(max(0, (n - t) // (t - o) + 1) for n, t, o in zip(latent, tile, overlap))


def package_tiles(args, vae):
    """The tiles the package decodes with: the node's defaults, or "auto" for the memory free now."""
    import psutil
    from allegro.vae_tiling import TileSettings, auto_tiles
    if args.child == "auto":
        free = psutil.virtual_memory().available
        return auto_tiles(vae.config, latent_shape(args.size)[2:], free, 4), free
    return TileSettings.from_config(vae.config), None


def latent_shape(size) -> list[int]:
    return [1, 4, size[0] // 4, size[1] // 8, size[2] // 8]


def child(args):
    from allegro.vae_tiling import TiledPlan, tiled_decode
    torch.set_grad_enabled(False)
    vae = build_vaes(args.channels, args.groups, args.sample_size, "ours" if args.child == "auto" else args.child, args.calm)
    latent = torch.randn(*latent_shape(args.size), generator=torch.Generator().manual_seed(1))
    extra = {}
    if args.child == "diffusers":
        video, stats = measure(lambda: vae.decode(latent).sample)
        video = video.permute(0, 2, 1, 3, 4)                                                # [B, T, C, ...] → [B, C, T, ...]
        from allegro.config import vae_config_from_dict
        extra["tiles"] = diffusers_tiles(latent.shape[2:], vae_config_from_dict(dict(vae.config)))
    else:
        tiles, free = package_tiles(args, vae)
        video, stats = measure(lambda: tiled_decode(vae, latent, tiles))                   # [B, C, T, H, W]
        unit, overlap = tiles.in_latent_units(vae.config)
        plan = TiledPlan.build(latent.shape[2:], unit, overlap, (1, 1, 1), tiles.spread)
        extra.update(tiles=len(plan), tile_size=f"{tiles.frames}x{tiles.height}x{tiles.width}", free=free)
    holes = 1.0 - (video != 0).any(dim=1).float().mean().item()
    # Every 2nd frame, row and column: what the parent compares the decodes on.
    save_file({"video": video[0, :, ::2, ::2, ::2].contiguous()}, sample_path(args, args.child))
    child_result({**stats, "holes": holes, **extra})


def sample_path(args, job: str) -> Path:
    return Path(args.out_dir) / f"vae_decode_{size_name(args.size)}_{job}.safetensors"


def measure_size(args, size, jobs) -> dict:
    args.size = size
    child_args = common.child_arguments(args) + ["--calm", str(args.calm)]
    runs = {name: (lambda name=name: run_child(__spec__.name, child_args + ["--child", name])) for name in jobs}
    results = alternate(runs, args.reps, args.warmup)
    samples = {name: load_file(sample_path(args, name))["video"] for name in jobs}
    found = {"results": results}
    ours, theirs = samples["ours"], samples["diffusers"]
    if median(results["diffusers"], "holes") == 0:
        found["equal"] = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    if "auto" in samples:
        a, b = (((x + 1) / 2).clamp(0, 1) for x in (samples["auto"], ours))
        found["auto_max_abs"] = (a - b).abs().max().item()
        mse = (a - b).pow(2).mean().item()
        found["auto_psnr"] = float("inf") if mse == 0 else 10 * math.log10(1 / mse)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, nargs="+", default=list(SIZES), help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0, help="unrecorded rounds (each decode is a fresh process)")
    parser.add_argument("--no-auto", action="store_true", help="skip the auto-tile decode")
    parser.add_argument("--calm", type=float, default=0.0,
                        help="scale the decoder's residual branches by this (e.g. 0.05: a trained VAE's regime)")
    common.add_reduced_vae_arguments(parser)
    parser.add_argument("--child", choices=JOBS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if args.child:
        args.size = args.size[0]
        return child(args)

    jobs = JOBS[:2] if args.no_auto else JOBS
    sizes = list(args.size)
    measured = {size: measure_size(args, size, jobs) for size in sizes}

    rows, auto_rows, memory_rows = [], [], []
    for size, found in measured.items():
        results = found["results"]
        ours, theirs = median(results["ours"]), median(results["diffusers"])
        equal = f"{found['equal']:.1e}" if "equal" in found else "— (diffusers leaves pixels unwritten)"
        rows.append([size_name(size), f"{results['ours'][0]['tiles']} / {results['diffusers'][0]['tiles']}",
                     f"{ours:.1f}", f"{theirs:.1f}", f"**{ours / theirs:.2f}**",
                     f"{100 * median(results['ours'], 'holes'):.1f}% / {100 * median(results['diffusers'], 'holes'):.1f}%",
                     equal])
        for name in jobs:
            extra = median([{"x": r["peak_rss"] - r["baseline_rss"]} for r in results[name]], "x")
            memory_rows.append([size_name(size), name, gib(median(results[name], "peak_rss")), gib(extra)])
        if "auto" in results:
            auto = results["auto"][0]
            auto_rows.append([size_name(size), f"{auto['tiles']} of {auto['tile_size']}", f"{median(results['auto']):.1f}",
                              f"{median(results['auto']) / theirs:.2f}", f"{median(results['auto']) / ours:.2f}",
                              f"{found['auto_max_abs']:.3f}", f"{found['auto_psnr']:.1f}", gib(auto["free"])])
    table = markdown_table(["size (frames x h x w)", "tiles ours / diffusers", "ours s", "diffusers s", "ratio",
                            "never-written pixels ours / diffusers", "ours vs diffusers (max rel. diff.)"], rows)
    body = [f"fp32, VAE channels {args.channels} / {args.groups} groups (released: (128, 256, 512, 512) / 32), "
            f"{args.sample_size}-px tiles (released: 320), random weights"
            f"{f' (residual branches x {args.calm})' if args.calm else ''}; {args.reps} alternating reps (medians), each "
            f"decode in a fresh process. Goals: ratio ≤ 0.5 where diffusers' grid is complete (with equal output, "
            f"≤ 1e-5), ≤ 1.2 elsewhere, no never-written pixel.", table]
    if auto_rows:
        body += ["**auto** tiles (the decode node's `tiling: auto`): the largest evenly spread tiles whose decode fits the "
                 "memory free at the start; differences from the reference tiling (ours above) on frames in 0..1, "
                 "every 2nd frame, row and column." + ("" if args.calm else " With random weights the decoder is chaotic: any "
                 "change of tiling changes the output a lot (--calm 0.05 gives a trained VAE's regime)."),
                 markdown_table(["size", "auto tiles", "auto s", "ratio to diffusers", "ratio to ours", "max abs diff.",
                                 "PSNR dB", "free GiB"], auto_rows)]
    body += [markdown_table(["size", "decode", "peak RSS GiB (during decode)", "of which decode GiB"], memory_rows)]
    report("VAE tiled decode", body, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
