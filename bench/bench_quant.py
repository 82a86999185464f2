"""Quantised weights: size, memory and error per format, and which format + block-swap setting fits
88x720x1280 on 8 / 12 / 16 / 24 GB GPUs.

1. File and resident bytes of the released DiT in each format, computed from its real tensor shapes
   (built on the meta device) and the storage rule (allegro/memory_plan.py, allegro/quantization.py).
2. On a reduced random-weight DiT whose width K-quants can encode (8 heads x 96 = 768, --layers
   blocks, the release's caption width), converted by scripts/convert_weights.py: the converter's
   time, the file, then in a fresh process per format, ComfyUI's loader and one model call at
   --video (CFG batch 2): peak RSS, the bytes ComfyUI counts for the model, and the prediction's
   error against the fp32 model. Random weights are harsher on quantisation than trained ones
   (no outliers to fit, no redundancy), so these errors are pessimistic.
3. The activation factor of the VRAM arithmetic, measured with PyTorch's profiler in one block at
   the released width (CPU; the same tensors are allocated on a GPU with SDPA attention).
4. The VRAM plan for the full-size video (computed: no GPU measured it).

    .venv/bin/python -m bench.bench_quant                          # ~10 min on 2 cores (4 blocks, 8x128x128)
    .venv/bin/python -m bench.bench_quant --layers 2 --video 8x64x64 --formats Q4_K fp8_scaled   # smoke
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

from allegro.memory_plan import (ACTIVATION_WIDTHS, GB, RUNTIME_RESERVE, activation_bytes, plan, tokens,
                                 weight_bytes)
from bench import common
from bench.bench_vae_decode import parse_size
from bench.timing import child_result, markdown_table, measure, report, run_child

QUANT_FORMATS = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "fp8_scaled")
LOADED = ("fp32", "bf16", *QUANT_FORMATS)
PCIE_BYTES_PER_S = 25e9          # PCIe 4.0 x16, what pinned host-to-GPU copies reach in practice
RELEASED_PARAMETERS = 2_771_907_856


def model_path(out_dir: Path, layers: int) -> Path:
    return Path(out_dir) / "comfy-base" / "models" / "diffusion_models" / f"allegro_quant_bench_{layers}l.safetensors"


def write_reduced(out_dir: Path, layers: int) -> Path:
    """A width-768 random T2V transformer in the release geometry (fp32, config in the metadata)."""
    from safetensors.torch import save_file
    from allegro_devtools.random_models import RELEASE_GEOMETRY, build_transformer, public_config
    from allegro_devtools.runtime import prepare_base_dir
    prepare_base_dir(Path(out_dir) / "comfy-base")
    path = model_path(out_dir, layers)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        model = build_transformer(dict(num_attention_heads=8, attention_head_dim=96, num_layers=layers,
                                       cross_attention_dim=768, caption_channels=4096, **RELEASE_GEOMETRY.transformer),
                                  seed=0)
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, path, metadata={"format": "pt", "config": json.dumps(public_config(model))})
    return path


def file_name(source: Path, fmt: str) -> str:
    return f"{source.stem}_{fmt}{'.safetensors' if fmt == 'fp8_scaled' else '.gguf'}"


def child(args):
    """Load one format through ComfyUI's loader, run one model call, report memory and the output."""
    from safetensors.torch import save_file
    runtime = common.boot_comfy(Path(args.out_dir))
    import comfy.model_management
    frames, height, width = parse_size(args.video)
    generator = torch.Generator().manual_seed(0)
    latent = (2, 4, -(-frames // 4), height // 8, width // 8)
    x = torch.randn(*latent, generator=generator) * 20
    context = torch.randn(2, 512, 4096, generator=generator)
    mask = torch.ones(2, 512, dtype=torch.long)
    mask[0, 40:] = 0
    mask[1, 12:] = 0

    def work():
        patcher = runtime.call("AllegroVideo_ModelLoader", model_name=args.child_model, weight_dtype=args.child_dtype)[0]
        comfy.model_management.load_models_gpu([patcher])
        with torch.no_grad():
            out = patcher.model.apply_model(x, torch.tensor([30.0, 30.0]), c_crossattn=context, attention_mask=mask)
        return patcher, out

    (patcher, out), stats = measure(work)
    save_file({"out": out.contiguous()}, args.child_output)
    child_result({"peak_rss": stats["peak_rss"], "baseline_rss": stats["baseline_rss"], "seconds": stats["seconds"],
                  "model_bytes": patcher.model_size()})


def block_peak(tokens_count: int) -> tuple[int, int]:
    """(peak bytes allocated in one release-width bf16 block above its input, bytes of one [tokens, width])."""
    from torch.profiler import ProfilerActivity, profile
    from allegro.config import RELEASE_TRANSFORMER as config
    from allegro.rope import RotaryEmbedding3D
    from allegro.transformer import TransformerBlock, sdpa_attention
    block = TransformerBlock(config, torch.nn, dtype=torch.bfloat16).eval()
    for tensor in block.parameters():
        torch.nn.init.normal_(tensor, std=0.02)
    grid = (tokens_count // 512, 16, 32)
    count, width = grid[0] * grid[1] * grid[2], config.inner_dim
    x, context = torch.randn(1, count, width, dtype=torch.bfloat16), torch.randn(1, 512, width, dtype=torch.bfloat16)
    bias = torch.zeros(1, 1, 1, 512, dtype=torch.bfloat16)
    bias[..., 100:] = -10000.0
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        block(x, context, torch.randn(1, 6 * width, dtype=torch.bfloat16), bias,
              RotaryEmbedding3D(config.attention_head_dim, grid, (2.2, 2.0, 2.0)), sdpa_attention, sdpa_attention)
    events = sorted((e for e in profiler.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak, count * width * 2


def activation_factor() -> float:
    """The per-token growth of a block's peak, in [tokens, width] bf16 units: measured at 1024 and 2048
    tokens, so what does not grow with the video (the 512 caption tokens' keys and values) cancels."""
    (small, small_unit), (large, large_unit) = block_peak(1024), block_peak(2048)
    return (large - small) / (large_unit - small_unit)


def released_table() -> list[list]:
    rows = []
    for fmt in ("fp32", "bf16", "fp8_e4m3fn", *QUANT_FORMATS):
        sizes = weight_bytes(fmt)
        rows.append([fmt, f"{sizes.file / GB:.2f}", f"{sizes.resident / GB:.2f}",
                     f"{8 * sizes.resident / RELEASED_PARAMETERS:.2f}", f"{sizes.block / GB:.3f}",
                     f"{sizes.outside_blocks / GB:.3f}"])
    return rows


def vram_tables(prefetch: int = 1):
    gpus = (8, 12, 16, 24)
    formats = ("bf16", "fp8_e4m3fn", "fp8_scaled", "Q8_0", "Q6_K", "Q5_K", "Q4_K")
    rows = []
    for fmt in formats:
        cells = [fmt]
        for gb in gpus:
            p = plan(fmt, gb * GB, prefetch=prefetch)
            if not p.fits:
                cells.append("does not fit")
            elif p.resident_blocks == 32:
                cells.append(f"no swap needed ({p.total / GB:.1f} GB)")
            else:
                streamed = (32 - p.resident_blocks) * weight_bytes(fmt).block
                seconds = 2 * streamed / PCIE_BYTES_PER_S            # batch 1: cond and uncond are two calls
                cells.append(f"Block Swap {p.resident_blocks} ({p.total / GB:.1f} GB; +{seconds:.2f} s/step copying)")
        rows.append(cells)
    return [f"{gb} GB" for gb in gpus], rows


def arithmetic_text(measured_factor: float) -> str:
    count = tokens(88, 720, 1280)
    unit = count * 2304 * 2
    q4, bf16 = weight_bytes("Q4_K"), weight_bytes("bf16")
    acts1, acts2 = activation_bytes(88, 720, 1280, 1), activation_bytes(88, 720, 1280, 2)
    p_q4, p_bf16 = plan("Q4_K", 8 * GB), plan("bf16", 8 * GB)
    dequant = 2 * 4 * 2304 * 2304 * 4
    return "\n".join([
        f"Arithmetic (88x720x1280 → {count:,} tokens of width 2304; one [tokens, width] bf16 activation = "
        f"{unit / GB:.3f} GB):",
        f"- Activations of one DiT call: {ACTIVATION_WIDTHS:g} such tensors at the peak (the block's input + "
        f"{ACTIVATION_WIDTHS - 1:g} at the MLP; measured above: {measured_factor:.2f}) + captions and RoPE tables = "
        f"{acts1 / GB:.2f} GB for batch 1; {acts2 / GB:.2f} GB when ComfyUI runs cond and uncond as one batch of 2 "
        "(it does only when memory allows, otherwise one after the other). SDPA (flash / memory-efficient) never "
        "stores the tokens x tokens matrix (79,200² x 24 heads would be 300 GB in bf16).",
        f"- Q4_K on 8 GB: {RUNTIME_RESERVE / GB:.1f} (CUDA runtime, cuBLAS, allocator slack) + "
        f"{q4.outside_blocks / GB:.3f} (embeddings, final layer, bf16) + 32 x {q4.block / GB:.4f} (blocks) + "
        f"{acts1 / GB:.2f} (activations) + {dequant / GB:.2f} (the largest layer dequantised, fp32, x2 with a LoRA) = "
        f"{p_q4.total / GB:.2f} GB.",
        f"- bf16 on 8 GB: {RUNTIME_RESERVE / GB:.1f} + {bf16.outside_blocks / GB:.3f} + {p_bf16.resident_blocks} x "
        f"{bf16.block / GB:.3f} resident + {p_bf16.buffers / GB:.2f} (streamed blocks in flight: the running one + 1 "
        f"prefetched) + {acts1 / GB:.2f} = {p_bf16.total / GB:.2f} GB.",
        "- T5-XXL is not on the GPU while sampling: ComfyUI offloads it (9.8 GB fp16, 4.9 GB fp8); while encoding "
        "the prompt it loads as much of it as fits and streams the rest (a one-off, seconds).",
        "- VAE decode runs after sampling with the DiT offloaded: 0.7 GB of fp32 weights (0.35 GB in bf16) plus one "
        "tile's activations, which the tile size sets (24x320x320 by default; lower tile_size / tile_frames on "
        "'Allegro VAE Decode' if it runs out of memory, and it retries smaller tiles by itself).",
        f"- Streaming cost: the streamed blocks cross PCIe once per model call; at {PCIE_BYTES_PER_S / 1e9:.0f} GB/s "
        "(PCIe 4.0 x16, pinned memory) and 2 calls per step (batch 1), against a step that computes 4.48 PFLOP "
        "(minutes on such GPUs), copying is a few percent of the time.",
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="blocks of the reduced model (released: 32)")
    parser.add_argument("--video", default="8x128x128", help="frames x height x width of the measured model call")
    parser.add_argument("--formats", nargs="+", default=list(LOADED), choices=list(LOADED))
    parser.add_argument("--out-dir", default=str(common.DEFAULT_OUT))
    parser.add_argument("--markdown", help="also write the report here")
    parser.add_argument("--child-model"), parser.add_argument("--child-dtype"), parser.add_argument("--child-output")
    args = parser.parse_args()
    if args.child_model:
        return child(args)

    from scripts.convert_weights import convert
    from safetensors.torch import load_file
    source = write_reduced(Path(args.out_dir), args.layers)
    formats = ["fp32", *[f for f in args.formats if f != "fp32"]]
    conversions, results = {}, {}
    for fmt in formats:
        name = source.name
        if fmt in QUANT_FORMATS:
            target = source.parent / file_name(source, fmt)
            started = time.perf_counter()
            convert(source, target, fmt, overwrite=True, log=lambda *_: None)
            conversions[fmt] = (time.perf_counter() - started, target.stat().st_size)
            name = target.name
        output = Path(args.out_dir) / f"quant-{fmt}.safetensors"
        dtype = "bf16" if fmt == "bf16" else "fp32"
        results[fmt] = run_child("bench.bench_quant", ["--child-model", name, "--child-dtype", dtype,
                                                      "--child-output", str(output), "--video", args.video,
                                                      "--out-dir", args.out_dir])
        results[fmt]["out"] = load_file(output)["out"]
    exact = results["fp32"]["out"]
    rows = []
    for fmt in formats:
        out = results[fmt]["out"]
        relative_max = ((out - exact).abs().max() / exact.abs().max()).item()
        relative_rms = ((out - exact).norm() / exact.norm()).item()
        seconds, size = conversions.get(fmt, (None, source.stat().st_size))
        rows.append([fmt, f"{size / 2**20:.1f}", "-" if seconds is None else f"{seconds:.1f}",
                     f"{results[fmt]['model_bytes'] / 2**20:.1f}",
                     f"{(results[fmt]['peak_rss'] - results[fmt]['baseline_rss']) / 2**20:.0f}",
                     f"{relative_rms:.2e}", f"{relative_max:.2e}"])
    factor = activation_factor()
    gpu_headers, gpu_rows = vram_tables()
    frames, height, width = parse_size(args.video)
    body = [
        "#### The released DiT (2.77 B parameters), computed from its tensor shapes",
        "Resident = in memory once loaded: quantised blocks as stored, the tensors a file keeps unquantised in bf16.",
        markdown_table(["format", "file GB", "resident GB", "bits / weight", "one block GB", "outside the blocks GB"],
                       released_table()),
        f"#### Reduced model: width 768 (8 heads x 96), {args.layers} blocks, captions 4096 wide, random weights",
        f"One model call through ComfyUI's loader at {frames}x{height}x{width} (CFG batch 2), fp32 compute (so the "
        "tensors a file keeps unquantised are fp32 in memory here), each format in a fresh process. Peak RAM: the RSS "
        "rise during loading and the call. Error: the prediction against the fp32 model's (relative RMS, and the "
        "largest difference over the largest value). Random weights have no structure to preserve, so these errors are "
        "pessimistic for trained weights.",
        markdown_table(["format", "file MiB", "convert s", "model MiB (ComfyUI)", "peak RAM MiB",
                        "error (relative RMS)", "error (max / max)"], rows),
        f"Activation factor measured in one release-width block (bf16, PyTorch profiler, growth from 1024 to 2048 "
        f"tokens): {factor:.2f} [tokens, width] tensors above the block's input (the plan uses "
        f"{ACTIVATION_WIDTHS - 1:g}).",
        "#### Which format + Block Swap fits 88x720x1280 (computed, not measured on a GPU)",
        "Sampling phase, CFG cond and uncond one after the other (batch 1, ComfyUI's choice when memory is short), "
        "prefetch 1. 'Block Swap N': N blocks resident in the Allegro Block Swap node.",
        markdown_table(["format", *gpu_headers], gpu_rows),
        arithmetic_text(factor),
    ]
    report("Quantised weights: size, memory, error; what fits 88x720x1280", body, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
