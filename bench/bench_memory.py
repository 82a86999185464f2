"""Peak memory of a full text-to-video run through the package's nodes in ComfyUI's own executor
(T5 loader → text encode, model loader, VAE loader, empty latent, sampler, VAE decode), against
the size of the weights, with the models ComfyUI's model management holds after every node.

Each mode runs in a fresh process (CPU):
  classic        ComfyUI's default cache: every node's outputs (the loaded models too) stay cached.
  classic-short  the same, and just before the sampler memory is declared short:
                 comfy.model_management.free_memory(more than is free), the call load_models_gpu makes
                 on a GPU before loading a model (for a CPU device ComfyUI skips it): T5 is unloaded.
  cache-none     `--cache-none`: outputs are dropped once their consumers ran, so the T5 loader's CLIP
                 (and its RAM) goes as soon as the text is encoded.

    .venv/bin/python -m bench.bench_memory                                       # medium model (~2.6 GB fp32)
    .venv/bin/python -m bench.bench_memory --size tiny --video 8x64x64           # smoke
"""
import argparse
import sys
from pathlib import Path

from allegro_devtools.random_models import SIZES, weight_bytes
from bench import common
from bench.bench_vae_decode import parse_size
from bench.timing import (AnonPeak, child_result, current_rss, gib, markdown_table, peak_rss, report, reset_peak_rss,
                          run_child)

MODES = ("classic", "classic-short", "cache-none")
NODE_LABELS = {"t5": "Load Allegro T5", "text": "Allegro Text Encode", "dit": "Load Allegro Model",
               "vae": "Load Allegro VAE", "latent": "Empty Latent Video", "sample": "Allegro Sampler",
               "decode": "Allegro VAE Decode"}


def t2v_graph(choice: str, video, steps: int) -> dict:
    frames, height, width = video
    return {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": choice, "dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {"clip": ["t5", 0], "prompt": "A red fox in the snow.",
                                                               "negative_prompt": "blurry", "use_template": False,
                                                               "clean_caption": False}},
        "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": choice, "weight_dtype": "fp32"}},
        "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": choice, "dtype": "fp32"}},
        "latent": {"class_type": "AllegroVideo_EmptyLatentVideo", "inputs": {"width": width, "height": height,
                                                                       "length": frames, "batch_size": 1}},
        "sample": {"class_type": "AllegroVideo_Sampler", "inputs": {
            "model": ["dit", 0], "positive": ["text", 0], "negative": ["text", 1], "latent": ["latent", 0],
            "seed": 42, "steps": steps, "cfg": 7.5, "sampler_name": "euler_ancestral",
            "scheduler": "linspace (reference)", "noise_stream": "reference", "denoise": 1.0}},
        "decode": {"class_type": "AllegroVideo_VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
    }


def loaded_models(model_management) -> list[str]:
    """What ComfyUI's model management holds as loaded, most recent first."""
    return [f"{type(m.model.model).__name__} {m.model_loaded_memory() / 2**30:.2f} GiB"
            for m in model_management.current_loaded_models if m.model is not None]


def child(args):
    import psutil
    folder = common.write_pipeline(args.size, Path(args.out_dir))
    runtime = common.boot_comfy(Path(args.out_dir))
    mm, execution = runtime.model_management, runtime.execution
    if args.child == "cache-none":
        runtime.executor = runtime.new_executor(execution.CacheType.NONE)
    stages, running, unloaded = [], {"node": None}, []
    send = runtime.server.send_sync

    def on_message(event, data, sid=None):
        # "executing" comes as each node starts: the previous node has just finished.
        if event in ("executing", "execution_success"):
            if running["node"] is not None:
                stages.append({"node": running["node"], "rss": current_rss(), "peak": peak_rss(),
                               "anon_peak": anon.take(), "loaded": loaded_models(mm)})
            running["node"] = data.get("node") if event == "executing" else None
            if running["node"] == "sample" and args.child == "classic-short":
                budget = psutil.virtual_memory().available + 2**30       # more than is free: memory is short
                unloaded.extend(type(m.model.model).__name__ for m in mm.free_memory(budget, mm.get_torch_device()))
            reset_peak_rss()
        return send(event, data, sid)
    runtime.server.send_sync = on_message

    baseline = current_rss()
    with AnonPeak() as anon:
        result = runtime.run(t2v_graph("diffusers/" + folder.name, args.video, args.steps), targets=["decode"])
    if result.status != "success":
        raise RuntimeError(f"the graph failed: {result.error}")
    weights = {name: weight_bytes(folder / name) for name in ("text_encoder", "transformer", "vae")}
    child_result({"stages": stages, "baseline": baseline, "weights": weights, "unloaded_when_short": unloaded})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="medium", help="model size")
    parser.add_argument("--video", type=parse_size, default=(16, 128, 128), help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out-dir", default=str(common.DEFAULT_OUT))
    parser.add_argument("--markdown", help="also write the report here")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    common.write_pipeline(args.size, Path(args.out_dir))           # once, before the children read it
    child_args = ["--size", args.size, "--video", "x".join(map(str, args.video)), "--steps", str(args.steps),
              "--out-dir", args.out_dir]
    body = []
    for mode in args.modes:
        result = run_child(__spec__.name, child_args + ["--child", mode])
        weights = result["weights"]
        rows = [[NODE_LABELS.get(s["node"], s["node"]), gib(s["rss"]), gib(s["peak"]), gib(s["anon_peak"]),
                 ", ".join(s["loaded"]) or "none"] for s in result["stages"]]
        peak, anon = max(s["peak"] for s in result["stages"]), max(s["anon_peak"] for s in result["stages"])
        body += [f"**{mode}** — RSS before the run {gib(result['baseline'])} GiB; peak during the run {gib(peak)} GiB "
                 f"({gib(peak - result['baseline'])} GiB above the start; anonymous memory peak {gib(anon)} GiB) "
                 f"for weights of "
                 f"{gib(sum(weights.values()))} GiB (T5 {gib(weights['text_encoder'])}, DiT "
                 f"{gib(weights['transformer'])}, VAE {gib(weights['vae'])})."
                 + (f" free_memory with memory short before the sampler unloaded: "
                    f"{', '.join(result['unloaded_when_short']) or 'nothing'}." if mode == "classic-short" else ""),
                 markdown_table(["after node", "RSS GiB", "peak RSS during node GiB", "peak anonymous during node GiB",
                                 "loaded in ComfyUI's model management"], rows)]
    transformer, t5 = SIZES[args.size].transformer, SIZES[args.size].t5
    intro = (f"Model '{args.size}' (fp32, random weights: DiT width "
             f"{transformer['num_attention_heads'] * transformer['attention_head_dim']}, "
             f"{transformer['num_layers']} blocks; T5 width {t5['d_model']}, {t5['num_layers']} blocks), video "
             f"{'x'.join(map(str, args.video))}, {args.steps} steps, CPU; each mode in a fresh process. RSS counts "
             "memory-mapped weight files too (pages the kernel can drop); anonymous memory (RssAnon, sampled every "
             "20 ms) is what can exhaust RAM.")
    report("Memory of a full T2V run", [intro] + body, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
