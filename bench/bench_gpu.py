"""GPU benchmark at Allegro's full size (88 x 720 x 1280, 79,200 tokens, CFG batch 2) with the real
architecture and random weights: seconds per step, minutes per 100 steps, achieved TFLOP/s, peak
VRAM; SDPA backend choice, optional torch.compile, and block swap (only some blocks resident).

    .venv/bin/python -m bench.bench_gpu                       # all blocks resident, auto SDPA
    .venv/bin/python -m bench.bench_gpu --resident 32 16 8    # block-swap trade-off
    .venv/bin/python -m bench.bench_gpu --compile --backend flash cudnn
    .venv/bin/python -m bench.bench_gpu --vae                 # + tiled VAE decode of the full latent
    .venv/bin/python -m bench.bench_gpu --step-cache 0.05 0.1 0.2 --cache-steps 30   # step cache: speed-up, PSNR

Prints a markdown table (with the device name) ready for bench/RESULTS.md.
"""
import argparse
import contextlib
import statistics
import sys
import time

import torch

from allegro.block_swap import BlockSwap
from allegro.dit_wrappers import Wrappers
from allegro.schedule import linspace_schedule, training_sigmas
from allegro.step_cache import StepCache
from allegro.config import TransformerConfig, VAEConfig
from allegro.transformer import AllegroTransformer3D
from bench.timing import command_line

LATENT = (22, 90, 160)          # 88 frames, 720 x 1280
TEXT_TOKENS = 512


def flops_per_step(config: TransformerConfig, tokens: int, batch: int = 2) -> float:
    """Multiply-adds x 2 of one CFG step: projections, attention over all tokens, cross-attention
    over the 512 caption tokens, and the 4x MLP, for every block."""
    d = config.inner_dim
    self_product, cross_product = attention_product_flops(config, tokens, batch)
    per_token = 8 * d * d + 4 * d * d + 16 * d * d
    context = 2 * 2 * TEXT_TOKENS * d * d                       # caption keys and values, per block
    return batch * config.num_layers * (tokens * per_token + context) + config.num_layers * (self_product + cross_product)


def attention_product_flops(config: TransformerConfig, tokens: int, batch: int = 2) -> tuple[float, float]:
    """FLOPs of one block's attention products (q·kᵀ and the weighted sum of v, not the projections) in one
    CFG step: (self-attention over all tokens, cross-attention over the caption tokens)."""
    d = config.inner_dim
    return batch * tokens * 4 * tokens * d, batch * tokens * 4 * TEXT_TOKENS * d


def sdpa_context(backend: str):
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend])


def random_model(dtype, layers: int = 32, config: TransformerConfig | None = None) -> AllegroTransformer3D:
    """The released architecture (or `config`) with N(0, 0.02) weights, on the CPU."""
    config = config or TransformerConfig(num_layers=layers)
    model = AllegroTransformer3D(config, device="cpu", dtype=dtype).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    model.set_feed_forward_chunking(16384)
    return model


def time_steps(model, inputs, steps: int, warmup: int, backend: str) -> list[float]:
    times = []
    with torch.no_grad(), sdpa_context(backend):
        for step in range(warmup + steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(*inputs)
            torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return times


def bench_dit(args, device):
    rows = []
    dtype = torch.bfloat16
    frames, rows_, cols = LATENT
    x = torch.randn(2, 4, frames, rows_, cols, device=device, dtype=dtype)
    timestep = torch.tensor([999.0, 999.0], device=device)
    context = torch.randn(2, TEXT_TOKENS, 4096, device=device, dtype=dtype)
    mask = torch.zeros(2, TEXT_TOKENS, device=device)
    mask[:, :120] = 1
    config = TransformerConfig(num_layers=args.layers)
    tokens = frames * (rows_ // 2) * (cols // 2)
    flops = flops_per_step(config, tokens)
    for resident in args.resident:
        for backend in args.backend:
            model = random_model(dtype, args.layers)
            swap = None
            if resident >= args.layers:
                model.to(device)
            else:
                for name, module in model.named_children():
                    if name != "transformer_blocks":
                        module.to(device)
                model.scale_shift_table.data = model.scale_shift_table.data.to(device)
                swap = BlockSwap(model, resident, device)
            runner = torch.compile(model) if args.compile else model
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            wrappers = Wrappers([swap] if swap is not None else [])
            times = time_steps(runner, (x, timestep, context, mask, wrappers), args.steps, args.warmup, backend)
            per_step = statistics.median(times)
            rows.append((f"DiT, {resident}/{args.layers} blocks resident", backend, args.compile, per_step,
                         per_step * 100 / 60, flops / per_step / 1e12, torch.cuda.max_memory_allocated(device) / 2**30))
            if swap is not None:
                swap.remove()
            del model, runner
            torch.cuda.empty_cache()
    return rows, flops


def euler_sample(model, noise, context, mask, steps: int, cfg: float = 7.5, step_cache=None):
    """Deterministic Euler over the reference's linspace schedule with CFG (context and mask hold
    the conditional then the unconditional caption): the step cache's effect without sampler noise.
    noise [1, 4, T, H, W] → final latent [1, 4, T, H, W] (float32)."""
    table = training_sigmas()
    timesteps, sigmas = linspace_schedule(steps, table)
    x = noise.float() * (sigmas[0] ** 2 + 1) ** 0.5
    for i in range(steps):
        sigma = sigmas[i].item()
        scaled = (x / (sigma ** 2 + 1) ** 0.5).to(noise.dtype).expand(2, -1, -1, -1, -1)
        t = timesteps[i].to(noise.device).expand(2)
        wrappers = Wrappers([step_cache] if step_cache is not None else [],
                            options={"cache_key": "cfg", "progress": i / max(steps - 1, 1)})
        eps = model(scaled, t, context, mask, wrappers).float()
        eps = eps[1:] + cfg * (eps[:1] - eps[1:])
        x = x + eps * (sigmas[i + 1].item() - sigma)
    return x


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """dB, with the peak taken as the reference's range."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    peak = (b.max() - b.min()).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak ** 2 / mse)).item()


def bench_step_cache(args, device):
    """Uncached, then each threshold: sampling time and PSNR of the final latent against uncached."""
    dtype = torch.bfloat16
    model = random_model(dtype, args.layers).to(device)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, *LATENT, generator=generator).to(device, dtype)
    context = torch.randn(2, TEXT_TOKENS, 4096, generator=generator).to(device, dtype)
    mask = torch.zeros(2, TEXT_TOKENS, device=device)
    mask[:, :120] = 1
    rows, uncached = [], None
    with torch.no_grad():
        for threshold in [None] + args.step_cache:
            cache = None if threshold is None else StepCache(threshold)
            torch.cuda.synchronize()
            start = time.perf_counter()
            latent = euler_sample(model, noise, context, mask, args.cache_steps, step_cache=cache)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            if uncached is None:
                uncached, base = latent, seconds
            runs = args.cache_steps if cache is None else cache.computed
            rows.append(("no cache" if cache is None else f"threshold {threshold}", f"{runs}/{args.cache_steps}",
                         seconds, base / seconds, psnr(latent, uncached)))
    return rows


def bench_vae(args, device):
    from allegro.vae import AllegroVAE
    from allegro import vae_tiling
    vae = AllegroVAE(VAEConfig()).to(device).eval()
    latent = torch.randn(1, 4, *LATENT, device=device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        torch.cuda.synchronize()
        start = time.perf_counter()
        vae_tiling.tiled_decode(vae, latent, output_device="cpu")
        torch.cuda.synchronize()
    return [("VAE decode 88x720x1280 (fp32, tiled)", "-", False, time.perf_counter() - start, float("nan"),
             float("nan"), torch.cuda.max_memory_allocated(device) / 2**30)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--resident", type=int, nargs="+", default=[32])
    parser.add_argument("--backend", nargs="+", default=["auto"], choices=["auto", "flash", "cudnn", "efficient", "math"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--vae", action="store_true")
    parser.add_argument("--step-cache", type=float, nargs="*", default=[],
                        help="step-cache thresholds to compare with the uncached run (e.g. 0.05 0.1 0.2)")
    parser.add_argument("--cache-steps", type=int, default=30, help="sampling steps of the step-cache comparison")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench.bench_gpu needs a CUDA GPU (none found); see bench/RESULTS.md for measured figures.")
        return 2
    device = torch.device("cuda")
    rows, flops = bench_dit(args, device)
    if args.vae:
        rows += bench_vae(args, device)
    print(f"Device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}; "
          f"one CFG step = {flops / 1e15:.2f} PFLOP")
    print(f"Command: {command_line()}\n")
    print("| what | SDPA | compile | s/step | min/100 steps | TFLOP/s | peak VRAM GiB |")
    print("|---|---|---|---|---|---|---|")
    for what, backend, compiled, seconds, minutes, tflops, vram in rows:
        print(f"| {what} | {backend} | {compiled} | {seconds:.2f} | {minutes:.1f} | {tflops:.0f} | {vram:.1f} |")
    if args.step_cache:
        print(f"\nStep cache, {args.cache_steps} Euler steps, CFG 7.5, bf16, random weights (start 0.1, end 0.9):\n")
        print("| setting | model calls running the blocks | sampling s | speed-up | PSNR latent dB |")
        print("|---|---|---|---|---|")
        for setting, runs, seconds, speedup, db in bench_step_cache(args, device):
            print(f"| {setting} | {runs} | {seconds:.1f} | {speedup:.2f}x | {db:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
