"""LoRA training ('Allegro Train LoRA'): measured seconds per step and RAM on the reduced model on CPU,
with and without gradient checkpointing; what one block saves for its backward (SAVED_WIDTHS in
allegro/training_memory.py); and the computed VRAM of training the released model at 88x720x1280 and
40x368x640 in bf16, with and without checkpointing and block swap.

Each mode runs in a fresh process: ComfyUI booted in-process, the package's loaders and 'Allegro
Training Clip' make a clip of random frames, then the node's training loop runs `--steps` steps
(LoRA rank 16, fp32 adapters, fp32 model on CPU). Seconds per step: the median interval between
consecutive progress updates (one per step), so set-up and the first step are not counted.

    .venv/bin/python -m bench.bench_training                                       # reduced model, 16x128x128
    .venv/bin/python -m bench.bench_training --size tiny --video 8x64x64 --steps 3    # smoke
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from allegro.config import TEXT_TOKENS
from allegro.training_memory import describe, training_plan
from allegro_devtools.random_models import SIZES
from bench import common
from bench.bench_vae_decode import parse_size
from bench.timing import (AnonPeak, child_result, current_rss, gib, machine, markdown_table, peak_rss, report,
                          reset_peak_rss, run_child)

MODES = ("checkpointing off", "checkpointing on")
# The computed table: the released model's two trained sizes, with and without checkpointing, all blocks
# resident and with 16 of 32 streamed (block swap).
PLANNED = [(88, 720, 1280), (40, 368, 640)]
SWAP_RESIDENT = (None, 16, 0)


def settings(steps: int, checkpointing: bool) -> dict:
    return {"steps": steps, "learning_rate": 1e-4, "rank": 16, "algorithm": "LoRA", "snr_gamma": 5.0,
            "caption_dropout": 0.0, "mask": "seed mix", "gradient_checkpointing": checkpointing,
            "existing_lora": "[None]", "seed": 0, "lora_dtype": "fp32"}


def kind_of(shape: tuple, tokens: int, weight_shapes: set) -> str:
    """weights (a block parameter's shape), activations (a video-token axis), captions (a caption-token
    axis only) or other (per-sample vectors and the like)."""
    if shape in weight_shapes:
        return "weights"
    if tokens in shape or tokens * 2 in shape:        # [B, tokens, ...] or the CFG-free batch folded in
        return "activations"
    return "captions" if TEXT_TOKENS in shape else "other"


def saved_per_block(train, model, clip: dict, set_up: dict) -> dict:
    """Bytes each transformer block saves for its backward in one step (no checkpointing), by kind_of,
    from saved-tensor hooks."""
    diffusion = model.model.diffusion_model
    blocks = diffusion.transformer_blocks
    weight_shapes = {tuple(p.shape) for p in blocks.parameters() if p.ndim >= 2}
    tokens = clip["latent"][0, 0].numel() // 4
    current, seen = {"block": None}, set()
    saved = {kind: [0] * len(blocks) for kind in ("activations", "weights", "captions", "other")}
    hooks = [block.register_forward_pre_hook(lambda _m, _a, i=i: current.update(block=i))
             for i, block in enumerate(blocks)]
    hooks += [block.register_forward_hook(lambda *_: current.update(block=None)) for block in blocks]

    def pack(tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.dtype)
        if current["block"] is not None and key not in seen:
            seen.add(key)
            kind = kind_of(tuple(tensor.shape), tokens, weight_shapes)
            saved[kind][current["block"]] += tensor.untyped_storage().nbytes()
        return tensor

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            train(model, [clip], {**set_up, "steps": 1})
    finally:
        for hook in hooks:
            hook.remove()
    return saved


def child(args):
    folder = common.write_pipeline(args.size, Path(args.out_dir))
    runtime = common.boot_comfy(Path(args.out_dir))
    choice = "diffusers/" + folder.name
    frames, height, width = args.video
    t5 = runtime.call("AllegroVideo_T5Loader", text_encoder=choice, dtype="fp32")[0]
    caption = runtime.call("AllegroVideo_TextEncode", clip=t5, prompt="a paper boat on a pond", negative_prompt="",
                           use_template=False, clean_caption=False)[0]
    vae = runtime.call("AllegroVideo_VAELoader", vae_name=choice, dtype="fp32")[0]
    model = runtime.call("AllegroVideo_ModelLoader", model_name=choice, weight_dtype="fp32")[0]
    pixels = torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(0))
    clip = runtime.call("AllegroVideo_TrainingClip", frames=pixels, caption=caption, vae=vae)[0][0]
    train = sys.modules[runtime.node_types["AllegroVideo_TrainLoRA"].__module__].train
    checkpointing = args.child == "checkpointing on"
    set_up = settings(args.steps, checkpointing)
    result = {}
    if not checkpointing:
        result["saved"] = saved_per_block(train, model, clip, set_up)
        diffusion = model.model.diffusion_model
        result["one_width"] = clip["latent"][0, 0].numel() // 4 * diffusion.proj_out.weight.shape[1] * 4
        first_block = diffusion.transformer_blocks[0]
        result["block_weights"] = sum(p.numel() * p.element_size() for p in first_block.parameters())

    stamps = []
    import comfy.utils
    comfy.utils.set_progress_bar_global_hook(lambda *_args, **_kwargs: stamps.append(time.perf_counter()))
    baseline = current_rss()
    reset_peak_rss()
    with AnonPeak() as anon:
        _, _, losses = train(model, [clip], set_up)
        result["anon_peak"] = anon.take()
    result.update(seconds=statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:])) if len(stamps) > 2
                  else stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan"),
                  baseline=baseline, peak=peak_rss(), losses=losses)
    child_result(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="reduced", help="model size")
    parser.add_argument("--video", type=parse_size, default=(16, 128, 128), help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out-dir", default=str(common.DEFAULT_OUT))
    parser.add_argument("--markdown", help="also write the report here")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    common.write_pipeline(args.size, Path(args.out_dir))
    child_args = ["--size", args.size, "--video", "x".join(map(str, args.video)), "--steps", str(args.steps),
                  "--out-dir", args.out_dir]
    rows, widths = [], None
    for mode in MODES:
        result = run_child(__spec__.name, child_args + ["--child", mode])
        rows.append([mode, f"{result['seconds']:.3f}", gib(result["peak"]), gib(result["anon_peak"]),
                     gib(result["baseline"]), f"{result['losses'][0]:.4f} → {result['losses'][-1]:.4f}"])
        if "saved" in result:
            saved = result["saved"]
            widths = [a / result["one_width"] for a in saved["activations"]]
            weights = [w / result["block_weights"] for w in saved["weights"]]
            others = {kind: max(saved[kind]) for kind in ("captions", "other")}
    transformer = SIZES[args.size].transformer
    intro = (f"Model '{args.size}' (fp32, random weights: DiT width "
             f"{transformer['num_attention_heads'] * transformer['attention_head_dim']}, {transformer['num_layers']} "
             f"blocks), one clip of {'x'.join(map(str, args.video))}, LoRA rank 16 (fp32), {args.steps} steps, CPU; "
             f"each mode in a fresh process; {machine()}. Seconds per step: median between progress updates.")
    measured = markdown_table(["mode", "s / step", "peak RSS GiB", "peak anonymous GiB", "RSS before GiB",
                               "loss first → last"], rows)
    saved_text = (f"Saved for backward per block (no checkpointing): {', '.join(f'{w:.1f}' for w in widths)} widths of "
                  "[tokens, width] (allegro/training_memory.py SAVED_WIDTHS), and "
                  f"{', '.join(f'{w:.2f}' for w in weights)}"
                  " x the block's weight bytes in weight-shaped tensors (the patched weights); at most "
                  f"{others['captions'] / 2**20:.1f} MiB caption-shaped and {others['other'] / 2**20:.1f} MiB other."
                  if widths else "")
    plans = [training_plan(*size, checkpointing, resident) for size in PLANNED for checkpointing in (False, True)
             for resident in SWAP_RESIDENT]
    computed = markdown_table(["video", "checkpointing", "blocks resident", "weights GB", "LoRA + AdamW GB",
                               "saved for backward GB", "working GB", "total GB"], describe(plans))
    note = ("Computed VRAM of one training step on the released DiT (bf16, batch 1, LoRA rank 16 in fp32 with AdamW, "
            "T5 and VAE offloaded; allegro/training_memory.py; includes 1 GB CUDA runtime). Not measured on a GPU.")
    report("LoRA training", [intro, measured, saved_text, note, computed], args.markdown)


if __name__ == "__main__":
    sys.exit(main())
