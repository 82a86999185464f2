"""TI2V conditioning encode at 88 x 720 x 1280: the package's encode_conditioning_video (what 'Allegro
TI2V Conditioning' runs through AllegroComfyVAE.encode_conditioning_frames: all-black tiles encoded
once, never building the video) vs the reference approach (build the whole black 88-frame video with
the image(s) in it and tiled-encode it; diffusers' AutoencoderKLAllegro.tiled_encode is that encode).

First frame only, and first + last frame. Each job runs in its own fresh subprocess, alternating;
time, peak RSS, encoder runs, and the max abs difference of the two latents (the shortcut is exact:
~1e-6 is float rounding). Reduced-channel VAE, released architecture and tile geometry, fp32 CPU.

    .venv/bin/python -m bench.bench_ti2v_encode                      # full size, 1 rep (~25 min)
    .venv/bin/python -m bench.bench_ti2v_encode --size 24x240x240 --sample-size 240 --channels 4,8,8,8 --modes first+last --reps 1  # smoke

The reference encodes all 75 tiles (~6 min per run on 2 cores), so the default is 1 rep.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from bench import common
from bench.bench_vae_decode import parse_size
from bench.timing import alternate, child_result, gib, markdown_table, measure, median, report, run_child

MODES = {"first": "first frame", "first+last": "first + last frame"}
IMPLEMENTATIONS = ("ours", "reference")


def conditioning_images(count: int, height: int, width: int) -> list[torch.Tensor]:
    """Smooth random images [3, H, W] in [-1, 1] (like photos, unlike white noise)."""
    generator = torch.Generator().manual_seed(5)
    coarse = torch.randn(count, 3, max(2, height // 32), max(2, width // 32), generator=generator)
    return list(torch.tanh(F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)))


def build_vae(args, implementation: str):
    from diffusers import AutoencoderKLAllegro
    from allegro.config import vae_config_from_dict
    from allegro.vae import AllegroVAE
    torch.manual_seed(0)
    reference = AutoencoderKLAllegro(block_out_channels=args.channels, norm_num_groups=args.groups,
                                     sample_size=args.sample_size).eval()
    if implementation == "reference":
        reference.enable_tiling()
        return reference, reference.encoder
    ours = AllegroVAE(vae_config_from_dict(dict(reference.config))).eval()
    ours.load_state_dict(reference.state_dict())
    return ours, ours.encoder


def child(args):
    from allegro.vae_tiling import TileSettings, encode_conditioning_video
    torch.set_grad_enabled(False)
    implementation, mode = args.child.split(":")
    frames, height, width = args.size
    indices = [0, frames - 1] if mode == "first+last" else [0]
    images = dict(zip(indices, conditioning_images(len(indices), height, width)))
    vae, encoder = build_vae(args, implementation)
    runs = []
    encoder.register_forward_hook(lambda *_: runs.append(1))           # counts encoder (tile) runs

    def reference_encode():
        video = torch.zeros(1, 3, frames, height, width)
        for index, image in images.items():
            video[0, :, index] = image
        return vae.encode(video).latent_dist.mean

    def our_encode():
        return encode_conditioning_video(vae, images, frames, height, width, TileSettings.from_config(vae.config))

    latent, stats = measure(reference_encode if implementation == "reference" else our_encode)
    save_file({"latent": latent.float().contiguous()},
              Path(args.out_dir) / f"ti2v_{implementation}_{mode.replace('+', '_')}.safetensors")
    child_result({**stats, "encoder_runs": len(runs)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=(88, 720, 1280), help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    common.add_reduced_vae_arguments(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args)

    size_arg = "x".join(map(str, args.size))
    child_args = common.child_arguments(args)
    jobs = {f"{implementation}:{mode}": (lambda job=f"{implementation}:{mode}": run_child(__spec__.name, child_args + ["--child", job]))
            for mode in args.modes for implementation in IMPLEMENTATIONS}
    results = alternate(jobs, args.reps, args.warmup)

    rows, differences = [], []
    for mode in args.modes:
        latents = {i: load_file(Path(args.out_dir) / f"ti2v_{i}_{mode.replace('+', '_')}.safetensors")["latent"] for i in IMPLEMENTATIONS}
        difference = (latents["ours"] - latents["reference"]).abs().max().item()
        differences.append(f"{MODES[mode]}: {difference:.2e} (latent max {latents['reference'].abs().max().item():.2f})")
        reference_seconds = median(results[f"reference:{mode}"])
        for implementation in IMPLEMENTATIONS:
            r = results[f"{implementation}:{mode}"]
            seconds = median(r)
            extra = median([{"x": x["peak_rss"] - x["baseline_rss"]} for x in r], "x")
            rows.append([MODES[mode], implementation, int(median(r, "encoder_runs")), f"{seconds:.1f}",
                         f"{seconds / reference_seconds:.2f}", gib(median(r, "peak_rss")), gib(extra),
                         f"{difference:.1e}"])
    table = markdown_table(["conditioning", "encode", "encoder runs", "median s", "ratio to reference",
                            "peak RSS GiB (during encode)", "of which encode GiB", "max abs diff ours vs reference"],
                           rows)
    body = [f"Conditioning video {size_arg} (frames x height x width) → latent [1, 4, {args.size[0] // 4}, "
            f"{args.size[1] // 8}, {args.size[2] // 8}], fp32, VAE channels {args.channels} / {args.groups} groups, "
            f"{args.sample_size}-px tiles, random weights; {args.reps} alternating rep(s) (medians), each job in a "
            "fresh process. The reference builds the black video and encodes every tile.",
            table, "Exactness (max abs difference of the latents): " + "; ".join(differences) + "."]
    report(f"TI2V conditioning encode, {size_arg}", body, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
