"""Every way to skip DiT work in one table: no cache, Allegro Step Cache, core EasyCache and LazyCache, Allegro PAB
at two settings, and PAB with the Step Cache: the same prompt, seed and steps through the package's nodes inside a
booted ComfyUI (reduced model, random weights, CPU).

Columns: model calls that ran the blocks, attention products run (self / cross, counted at ComfyUI's attention),
sampling time as a ratio to no cache, PSNR of the decoded frames (0..1, peak 1) and of the latent against no cache,
and the saving per CFG step this setting's skip pattern gives at full size (88x720x1280, 32 blocks: one step is
4.48 PFLOP, of which the attention products are 3.70 self + 0.02 cross; bench/bench_gpu.flops_per_step), computed,
not measured. Random weights: which steps the caches skip, and the PSNR, are indicative only.

    .venv/bin/python -m bench.bench_caches                     # reduced model, 16x256x256, 30 steps
    .venv/bin/python -m bench.bench_caches --size tiny --video 8x64x64 --steps 8 --reps 1 --warmup 0   # smoke
"""
import argparse
import sys
import time
from pathlib import Path

import torch

from allegro.config import TransformerConfig
from allegro_devtools.random_models import SIZES
from bench import common
from bench.bench_gpu import LATENT, attention_product_flops, flops_per_step
from bench.common import CFG, SEED
from bench.bench_step_cache import psnr
from bench.bench_vae_decode import parse_size
from bench.timing import alternate, markdown_table, median, report

PAB_DEFAULTS = dict(spatial_skip_range=2, spatial_timestep_start=100, spatial_timestep_end=800,
                    cross_skip_range=1, cross_timestep_start=100, cross_timestep_end=800)
PAB_STRONG = {**PAB_DEFAULTS, "spatial_skip_range": 3, "cross_skip_range": 5, "spatial_timestep_start": 50,
              "spatial_timestep_end": 900}
CORE_CACHE = dict(reuse_threshold=0.2, start_percent=0.15, end_percent=0.95, verbose=False)   # the core nodes' defaults


class Counter:
    """Counts the DiT's block runs (wrapping its run_blocks) and attention products (at ComfyUI's attention)."""

    def __init__(self, diffusion_model):
        import comfy.ldm.modules.attention as attention
        self.runs = self.self_attention = self.cross_attention = 0
        self.model, self.attention, self.exact = diffusion_model, attention, attention.attention_pytorch
        blocks = diffusion_model.run_blocks

        def run_blocks(*args, **kwargs):
            self.runs += 1
            return blocks(*args, **kwargs)

        def counted(q, k, v, heads, *args, **kwargs):
            if kwargs.get("skip_reshape"):                 # the DiT's calls ([B, heads, N, d]), not the text encoder's
                if k.shape[2] == q.shape[2]:
                    self.self_attention += 1
                else:
                    self.cross_attention += 1
            return self.exact(q, k, v, heads, *args, **kwargs)
        diffusion_model.run_blocks = run_blocks
        attention.optimized_attention = counted

    def take(self) -> tuple[int, int, int]:
        counts = (self.runs, self.self_attention, self.cross_attention)
        self.runs = self.self_attention = self.cross_attention = 0
        return counts


def full_size_saving(counts, plain, blocks: int) -> float:
    """PFLOP saved per CFG step at 88x720x1280 by this skip pattern (counts per run, as fractions of no cache's)."""
    config = TransformerConfig()
    tokens = LATENT[0] * (LATENT[1] // 2) * (LATENT[2] // 2)
    step = flops_per_step(config, tokens)
    self_product, cross_product = (config.num_layers * f for f in attention_product_flops(config, tokens))
    runs, self_calls, cross_calls = counts
    plain_runs = plain[0]
    # The runs that ran the blocks cost a step less the products they skipped; skipped runs cost nothing.
    spent = (runs * (step - self_product - cross_product) + self_calls / blocks * self_product
             + cross_calls / blocks * cross_product) / plain_runs
    return (step - spent) / 1e15


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="reduced", help="model size")
    parser.add_argument("--video", type=parse_size, default=(16, 256, 256), help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out-dir", default=str(common.DEFAULT_OUT))
    parser.add_argument("--markdown", help="also write the report here")
    args = parser.parse_args()

    setup = common.SamplingSetup(args.size, args.video, args.steps, Path(args.out_dir))
    runtime, model, sample = setup.runtime, setup.model, setup.sample

    step_cache, = runtime.call("AllegroVideo_StepCache", model=model, threshold=0.1, start=0.1, end=0.9)
    pab, = runtime.call("AllegroVideo_PAB", model=model, **PAB_DEFAULTS)
    settings = {
        "no cache": model,
        "Allegro Step Cache (threshold 0.1)": step_cache,
        "core EasyCache (defaults)": runtime.call("EasyCache", model=model, **CORE_CACHE)[0],
        "core LazyCache (defaults)": runtime.call("LazyCache", model=model, **CORE_CACHE)[0],
        "Allegro PAB (defaults: spatial 2, 100..800)": pab,
        "Allegro PAB (spatial 3, 50..900; cross 5)": runtime.call("AllegroVideo_PAB", model=model, **PAB_STRONG)[0],
        "Allegro PAB (defaults) + Step Cache 0.1": runtime.call("AllegroVideo_StepCache", model=pab, threshold=0.1,
                                                                 start=0.1, end=0.9)[0],
    }
    counter = Counter(model.model.diffusion_model)
    outputs, counts = {}, {}

    def job(name):
        def run():
            counter.take()
            with torch.inference_mode():                  # as ComfyUI's executor runs nodes
                start = time.perf_counter()
                outputs[name] = sample(settings[name], SEED)
                seconds = time.perf_counter() - start
            counts[name] = counter.take()
            return seconds
        return run

    results = alternate({name: job(name) for name in settings}, args.reps, args.warmup)
    with torch.inference_mode():
        frames_out = {name: setup.decode(out)
                      for name, out in outputs.items()}
    reference_latent, reference_frames = outputs["no cache"]["samples"], frames_out["no cache"]
    latent_peak = (reference_latent.max() - reference_latent.min()).item()
    reference_seconds = median(results["no cache"])
    blocks = SIZES[args.size].transformer["num_layers"]
    plain = counts["no cache"]
    rows = []
    for name in settings:
        runs, self_calls, cross_calls = counts[name]
        rows.append([name, f"{runs}/{plain[0]}", f"{self_calls}/{plain[1]}", f"{cross_calls}/{plain[2]}",
                     f"{median(results[name]) / reference_seconds:.2f}",
                     f"{psnr(frames_out[name], reference_frames, 1.0):.1f}",
                     f"{psnr(outputs[name]['samples'], reference_latent, latent_peak):.1f}",
                     f"{full_size_saving(counts[name], plain, blocks):.2f}"])
    transformer = SIZES[args.size].transformer
    body = [f"Model '{args.size}' (DiT width {transformer['num_attention_heads'] * transformer['attention_head_dim']}, "
            f"{blocks} blocks, fp32, random weights), video {'x'.join(map(str, args.video))}, {args.steps} steps Euler "
            f"ancestral, CFG {CFG}, seed {SEED}. Sampling time only, {args.reps} alternating reps after {args.warmup} "
            "warm-up, medians, on a shared CPU. Full-size saving: PFLOP per CFG step (of 4.48) at 88x720x1280 for "
            "the same pattern of skipped model calls and attention products, computed.",
            markdown_table(["setting", "model calls running the blocks", "self-attention products",
                            "cross-attention products", "time / no cache", "PSNR frames dB", "PSNR latent dB",
                            "full-size saving PFLOP/step"], rows)]
    report("Caches and PAB: calls, time and PSNR against no cache", body, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
