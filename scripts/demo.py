"""The main job (`make demo`): run workflows/allegro_t2v.json end to end in a headless ComfyUI with
this package installed, and print the path of the video it writes.

With the real Allegro weights in the ComfyUI models folders (see README: models/diffusers/Allegro
and models/text_encoders/t5xxl_fp16.safetensors) it runs the workflow as saved. Without them it
writes TINY RANDOM-WEIGHT checkpoints and runs the same graph on them at a small size: the
pipeline is real, the video is noise.

    .venv/bin/python -m scripts.demo [--gpu] [--tiny [--base-dir DIR]]    # from the repository root (`make demo`)
"""
import argparse
import json
import sys
import time
from pathlib import Path

from allegro_devtools.runtime import REPO_ROOT as REPO, comfyui_dir
from allegro_devtools.server import ComfyServer
from allegro_devtools.workflow_api import workflow_to_prompt
from allegro_devtools.workflow_check import saved_files

WORKFLOW = REPO / "workflows" / "allegro_t2v.json"
TINY_SIZE = {"width": 240, "height": 160, "length": 24}
TINY_STEPS = 8


def real_weights_present(models: Path, prompt: dict) -> bool:
    """Every file or folder the workflow's loaders name exists under `models`."""
    wanted = []
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] in ("AllegroVideo_ModelLoader", "AllegroVideo_VAELoader", "AllegroVideo_T5Loader"):
            name = inputs.get("model_name") or inputs.get("vae_name") or inputs.get("text_encoder")
            folder = {"AllegroVideo_ModelLoader": "diffusion_models", "AllegroVideo_VAELoader": "vae"}.get(node["class_type"], "text_encoders")
            wanted.append(models / name if name.startswith("diffusers/") else models / folder / name)
        if node["class_type"] == "CLIPLoader":
            wanted.append(models / "text_encoders" / inputs["clip_name"])
    return bool(wanted) and all(path.exists() for path in wanted)


def use_tiny_models(prompt: dict) -> dict:
    """The prompt on the tiny checkpoints (random_models.write_all) at TINY_SIZE and TINY_STEPS."""
    for node_id, node in list(prompt.items()):
        inputs = node["inputs"]
        if node["class_type"] in ("AllegroVideo_ModelLoader",):
            inputs.update(model_name="diffusers/Allegro-tiny", weight_dtype="fp32")
        elif node["class_type"] == "AllegroVideo_VAELoader":
            inputs["vae_name"] = "diffusers/Allegro-tiny"
        elif node["class_type"] in ("CLIPLoader", "AllegroVideo_T5Loader"):
            # A tiny T5 cannot pass ComfyUI's T5-XXL detection: load it from the tiny hub folder.
            prompt[node_id] = {"class_type": "AllegroVideo_T5Loader",
                               "inputs": {"text_encoder": "diffusers/Allegro-tiny", "dtype": "fp32"}}
        elif node["class_type"] == "AllegroVideo_EmptyLatentVideo":
            inputs.update(TINY_SIZE)
        elif node["class_type"] == "AllegroVideo_Sampler":
            inputs["steps"] = TINY_STEPS
    return prompt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", type=Path, default=WORKFLOW)
    parser.add_argument("--tiny", action="store_true", help="use tiny random weights even if real ones exist")
    parser.add_argument("--base-dir", type=Path, default=REPO / ".cache" / "demo",
                        help="the ComfyUI base directory (models, output) of a tiny-weight run")
    parser.add_argument("--gpu", action="store_true", help="do not force --cpu")
    args = parser.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    real_base = comfyui_dir()
    tiny, server = args.tiny, None
    try:
        if not tiny:
            # /object_info turns the UI workflow into an API prompt: ask a server on the user's ComfyUI
            # (where real weights would be); without them, restart on the demo folder with tiny ones.
            server = ComfyServer(real_base, cpu=not args.gpu).start()
            prompt = workflow_to_prompt(workflow, server.object_info())
            if not real_weights_present(real_base / "models", prompt):
                tiny = True
                server.stop()
                print("=" * 78)
                print("No Allegro weights found in", real_base / "models")
                print("(expected models/diffusers/Allegro and models/text_encoders/t5xxl_fp16.safetensors).")
        if tiny:
            print("Running the workflow with TINY RANDOM-WEIGHT checkpoints at", TINY_SIZE, f"{TINY_STEPS} steps:")
            print("every node runs for real, but the video is NOISE from a test-size model, not Allegro output.")
            print("=" * 78, flush=True)
            from allegro_devtools.random_models import write_all      # torch: only when needed
            write_all(args.base_dir / "models")
            server = ComfyServer(args.base_dir, cpu=not args.gpu).start()
            prompt = use_tiny_models(workflow_to_prompt(workflow, server.object_info()))
        started = time.time()
        entry = server.run(prompt, timeout=3600)
        if entry["status"]["status_str"] != "success":
            messages = dict(entry["status"]["messages"])
            error = messages.get("execution_error", {})
            print("The workflow failed:", error.get("exception_message", entry["status"]), file=sys.stderr)
            return 1
        videos = [path for path in saved_files(entry, server.base_dir / "output")
                  if path.suffix in (".mp4", ".webm", ".mov", ".gif")]
        print(f"Done in {time.time() - started:.0f} s{' (tiny random weights: noise)' if tiny else ''}.")
        for path in videos:
            print(path)
        return 0 if videos else 1
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
