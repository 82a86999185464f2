"""Seconds per sampling step: the package's Allegro Sampler node (inside a booted ComfyUI, on the
MODEL and CONDITIONING its loader and text-encode nodes made) vs diffusers' AllegroPipeline, on the
same random-weight files, size, steps, seed, Euler ancestral with CFG 7.5 (batch 2) on both, and
output_type="latent" (no VAE). Per-step time is the median interval between consecutive step
callbacks, so model loading, text encoding and the first step's set-up are not counted.

The node's model calls ComfyUI's configured attention, except that on CPU, where ComfyUI without
flags picks its chunked sub-quadratic attention, it calls PyTorch SDPA (as diffusers does). A third
row forces the sub-quadratic attention to show what that choice is worth.

    .venv/bin/python -m bench.bench_sampler                  # reduced model (width 384, 4 layers), 16x256x256
    .venv/bin/python -m bench.bench_sampler --size tiny --video 8x64x64 --steps 3 --reps 1 --warmup 0   # smoke
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from allegro_devtools.random_models import SIZES
from bench import common
from bench.common import CFG, NEGATIVE, PROMPT, SCHEDULER, SEED
from bench.bench_vae_decode import parse_size
from bench.timing import alternate, markdown_table, median, report



class StepClock:
    """Time stamps of step ends; the per-step time is the median gap (the first step is excluded)."""

    def __init__(self):
        self.stamps = []

    def tick(self, *_args, **_kwargs):
        self.stamps.append(time.perf_counter())

    def per_step(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return statistics.median(gaps) if gaps else float("nan")


def package_runner(runtime, choice: str, video, steps: int):
    """A job running the Allegro Sampler node; returns (job, its MODEL, last latent holder)."""
    import comfy.utils
    t5, = runtime.call("AllegroVideo_T5Loader", text_encoder=choice, dtype="fp32")
    positive, negative = runtime.call("AllegroVideo_TextEncode", clip=t5, prompt=PROMPT, negative_prompt=NEGATIVE,
                                      use_template=False, clean_caption=False)
    model, = runtime.call("AllegroVideo_ModelLoader", model_name=choice, weight_dtype="fp32")
    frames, height, width = video
    latent, = runtime.call("AllegroVideo_EmptyLatentVideo", width=width, height=height, length=frames, batch_size=1)
    last = {}

    def job():
        clock = StepClock()
        comfy.utils.set_progress_bar_global_hook(clock.tick)      # the sampler's per-step progress update
        with torch.inference_mode():                              # as ComfyUI's executor runs nodes
            out, = runtime.call("AllegroVideo_Sampler", model=model, positive=positive, negative=negative,
                                latent=latent, seed=SEED, steps=steps, cfg=CFG, sampler_name="euler_ancestral",
                                scheduler=SCHEDULER, noise_stream="reference", denoise=1.0)
        last["latent"] = out["samples"] * model.model.latent_format.scale_factor   # back to model space
        return {"seconds": clock.per_step(), "steps_timed": len(clock.stamps) - 1}
    return job, model, last


def diffusers_runner(folder: Path, video, steps: int):
    from diffusers import AllegroPipeline
    pipe = AllegroPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    frames, height, width = video
    last = {}

    def job():
        clock = StepClock()

        def on_step_end(_pipe, _index, _timestep, _tensors):
            clock.tick()
            return {}
        with torch.no_grad():
            out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG,
                       num_frames=frames, height=height, width=width, output_type="latent", max_sequence_length=512,
                       generator=torch.Generator("cpu").manual_seed(SEED), clean_caption=False,
                       callback_on_step_end=on_step_end)
        last["latent"] = out.frames
        return {"seconds": clock.per_step(), "steps_timed": len(clock.stamps) - 1}
    return job, last


def with_attention(model, function):
    """Wrap a job so the DiT of `model` (a ModelPatcher) calls `function(q, k, v, heads, mask=...)`
    on [B, heads, N, d] instead of the attention the package chose."""
    dit = model.model.diffusion_model

    def job_wrapper(job):
        def run():
            previous = dit.attention
            dit.attention = lambda q, k, v, mask=None, options=None: function(q, k, v, q.shape[1], mask=mask,
                                                                               skip_reshape=True, skip_output_reshape=True)
            try:
                return job()
            finally:
                dit.attention = previous
        return run
    return job_wrapper


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="reduced", help="model size")
    parser.add_argument("--video", type=parse_size, default=(16, 256, 256), help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out-dir", default=str(common.DEFAULT_OUT))
    parser.add_argument("--markdown", help="also write the report here")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (per-step time is the gap between step ends)")

    folder = common.write_pipeline(args.size, Path(args.out_dir))
    runtime = common.boot_comfy(Path(args.out_dir))
    import comfy.ldm.modules.attention as attention
    ours, model, ours_last = package_runner(runtime, "diffusers/" + folder.name, args.video, args.steps)
    theirs, theirs_last = diffusers_runner(folder, args.video, args.steps)
    jobs = {"Allegro Sampler node (as shipped: PyTorch SDPA on CPU)": ours,
            "Allegro Sampler node forced to ComfyUI's CPU default (attention_sub_quad)":
                with_attention(model, attention.attention_sub_quad)(ours),
            "diffusers AllegroPipeline (SDPA)": theirs}
    results = alternate(jobs, args.reps, args.warmup)

    reference = median(results["diffusers AllegroPipeline (SDPA)"])
    rows = [[name, f"{median(r):.3f}", f"{median(r) / reference:.3f}", int(median(r, "steps_timed"))]
            for name, r in results.items()]
    difference = (ours_last["latent"].float() - theirs_last["latent"].float()).abs().max().item()
    scale = theirs_last["latent"].float().abs().max().item()
    transformer, t5 = SIZES[args.size].transformer, SIZES[args.size].t5
    width = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    latent = [1, 4, args.video[0] // 4, args.video[1] // 8, args.video[2] // 8]
    tokens = latent[2] * latent[3] * latent[4] // 4
    body = [f"Model '{args.size}': width {width} ({transformer['num_attention_heads']} heads x {transformer['attention_head_dim']}), "
            f"{transformer['num_layers']} blocks, T5 width {t5['d_model']}, fp32, random weights. Video "
            f"{'x'.join(map(str, args.video))} → latent {latent}, {tokens} tokens, CFG {CFG} (batch 2), "
            f"{args.steps} steps, Euler ancestral; {args.reps} alternating reps after {args.warmup} warm-up (medians "
            "of each run's median step). Goal: ratio ≤ 1.05.",
            markdown_table(["sampler", "s/step", "ratio to diffusers", "steps timed per run"], rows),
            f"Same work on both sides: max abs difference of the final latents (model space, last run): {difference:.1e} "
            f"(latent max {scale:.1f}; relative {difference / scale:.1e})."]
    report("Sampling step time", body, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
