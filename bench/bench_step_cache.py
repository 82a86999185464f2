"""Step caching ('Allegro Step Cache' node, allegro/step_cache.py): sampling time and how far the
result moves, against the same run without the node (same model, seed, steps), through the
package's nodes inside a booted ComfyUI.

PSNR of the decoded frames (0..1, peak 1) and of the latent (peak = the uncached latent's range)
against the uncached run; higher is closer, inf is identical. Random weights make the DiT's input
change differently from step to step than a trained model's would, so which steps get skipped (and
the PSNR) is indicative only; the speed-up follows from the number of skipped steps. The last row,
an uncached run from another seed, shows what PSNR a wholly different video gets.

    .venv/bin/python -m bench.bench_step_cache                     # reduced model, 16x256x256, 30 steps
    .venv/bin/python -m bench.bench_step_cache --size tiny --video 8x64x64 --steps 8 --reps 1 --warmup 0   # smoke
"""
import argparse
import math
import sys
import time
from pathlib import Path

import torch

from allegro_devtools.random_models import SIZES
from bench import common
from bench.common import CFG, SEED
from bench.bench_vae_decode import parse_size
from bench.timing import alternate, markdown_table, median, report

OPTION = "allegro_step_cache"           # the node's key in transformer_options


def psnr(value: torch.Tensor, reference: torch.Tensor, peak: float) -> float:
    mse = (value.double() - reference.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="reduced", help="model size")
    parser.add_argument("--video", type=parse_size, default=(16, 256, 256), help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2],
                        help="the node's threshold (start 0.1 and end 0.9, its defaults)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out-dir", default=str(common.DEFAULT_OUT))
    parser.add_argument("--markdown", help="also write the report here")
    args = parser.parse_args()

    setup = common.SamplingSetup(args.size, args.video, args.steps, Path(args.out_dir))
    runtime, model, sample = setup.runtime, setup.model, setup.sample

    settings = {"no cache": model}
    settings.update({f"threshold {t:g}": runtime.call("AllegroVideo_StepCache", model=model, threshold=t, start=0.1,
                                                      end=0.9)[0] for t in args.thresholds})
    outputs, counts = {}, {}

    def job(name):
        patched = settings[name]

        def run():
            with torch.inference_mode():                  # as ComfyUI's executor runs nodes
                start = time.perf_counter()
                out = sample(patched, SEED)
                seconds = time.perf_counter() - start
            outputs[name] = out
            cache = patched.model_options.get("transformer_options", {}).get(OPTION)
            counts[name] = (cache.computed, cache.computed + cache.skipped) if cache is not None else None
            return seconds
        return run

    results = alternate({name: job(name) for name in settings}, args.reps, args.warmup)
    # Scale for the PSNR column: an uncached run from another seed (a different video altogether).
    with torch.inference_mode():
        outputs["other seed"] = sample(model, SEED + 1)
    with torch.inference_mode():
        frames_out = {name: setup.decode(out)
                      for name, out in outputs.items()}
    reference_latent, reference_frames = outputs["no cache"]["samples"], frames_out["no cache"]
    latent_peak = (reference_latent.max() - reference_latent.min()).item()
    clipped = ((reference_frames == 0) | (reference_frames == 1)).float().mean().item()
    reference_seconds = median(results["no cache"])
    rows = []
    for name in list(settings) + ["other seed"]:
        computed, timed = counts.get(name), name in results
        rows.append([name if timed else f"no cache, seed {SEED + 1} (PSNR scale)",
                     f"{computed[0]}/{computed[1]}" if computed else f"{args.steps}/{args.steps}",
                     f"{median(results[name]):.2f}" if timed else "-",
                     f"{reference_seconds / median(results[name]):.2f}x" if timed else "-",
                     f"{psnr(frames_out[name], reference_frames, 1.0):.1f}",
                     f"{psnr(outputs[name]['samples'], reference_latent, latent_peak):.1f}"])
    transformer = SIZES[args.size].transformer
    body = [f"Model '{args.size}' (DiT width {transformer['num_attention_heads'] * transformer['attention_head_dim']}, "
            f"{transformer['num_layers']} blocks, fp32, random weights), video {'x'.join(map(str, args.video))}, "
            f"{args.steps} steps Euler ancestral, CFG {CFG}; the node's start 0.1 / end 0.9. Sampling time only "
            f"(the sampler node), {args.reps} alternating reps after {args.warmup} warm-up, medians. "
            f"{100 * clipped:.0f}% of the uncached frames' values are clipped to 0 or 1 (equal there whatever the "
            "latent: the frames' PSNR reads high when this is large).",
            markdown_table(["setting", "model calls running the blocks", "sampling s", "speed-up",
                            "PSNR frames dB", "PSNR latent dB"], rows)]
    report("Step cache: speed-up and PSNR against the uncached run", body, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
