"""Compare this package's TI2V graphs with the original rhymes-ai/Allegro TI2V pipeline on the same tiny weights.

    git clone https://github.com/rhymes-ai/Allegro /path/to/Allegro      # the original code (not installed)
    .venv/bin/python -m scripts.compare_original_ti2v --original /path/to/Allegro [--steps 2]

Both sides get the same tiny hub-layout checkpoint (allegro_devtools.random_models; its VAE is swapped for a
32-channel one because the original VAE hard-codes GroupNorm(32)), the same images, prompts, seeds, CFG 8 and
size 240x240x24, and both encode the conditioning with the posterior mean. Four cases, each a shipped workflow
run through ComfyUI's executor and the original pipeline's `conditional_images` / `conditional_images_indices`:

  first frame      allegro_ti2v.json                    [0]
  first+last       allegro_ti2v_first_last.json         [0, -1]
  keyframes        allegro_ti2v_keyframes.json          [3, 14, -1]   (no frame 0; three different images)
  continuation     allegro_ti2v_extend.json, clip 2     [0, 1, 2, 3, 4]: clip 1's last 5 decoded frames

The original package is also called `allegro`, so each side runs in its own process. Printed per case: the
text embeddings, masked-video latents and frame mask, the sampled latents (relative to their largest value) —
once from each side's own inputs and once with the original pipeline fed this package's inputs (isolating the
sampler arithmetic) — and the decoded frames as the original returns them (uint8: the largest difference in
1/255 steps), with the share of pixels that are not clipped to 0 or 255 (random weights saturate many).
"""
import argparse
import contextlib
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
MODULE = "scripts.compare_original_ti2v"
SIZE, FRAMES, CFG = 240, 24, 8.0
CONTINUATION_OVERLAP = 5
# case: (workflow, sampler, conditioning, decode, text encode node ids; the original's indices)
CASES = {
    "first frame": ("allegro_ti2v", "6", "10", "8", "3", [0]),
    "first+last": ("allegro_ti2v_first_last", "6", "10", "8", "3", [0, -1]),
    "keyframes": ("allegro_ti2v_keyframes", "6", "10", "8", "3", [3, 14, -1]),
    "continuation": ("allegro_ti2v_extend", "22", "21", "23", "20", list(range(CONTINUATION_OVERLAP))),
}
KEYFRAME_LOADS = {"11": "first", "12": "kf2", "15": "kf3"}        # Load Image node -> test image


def test_images() -> dict:
    rng = np.random.default_rng(0)
    return {"first": np.linspace(0, 255, 200 * 320 * 3).reshape(200, 320, 3).astype(np.uint8),
            "last": rng.integers(0, 255, (300, 180, 3), dtype=np.uint8),
            "kf2": rng.integers(0, 255, (200, 320, 3), dtype=np.uint8),
            "kf3": (255 - np.linspace(0, 255, 200 * 320 * 3)).reshape(320, 200, 3).transpose(1, 0, 2).astype(np.uint8)}


def key(case: str) -> str:
    return case.replace(" ", "_").replace("+", "_")


def case_graph(comfy, case: str, steps: int) -> dict:
    """The case's shipped workflow as the front-end would queue it, on the tiny weights (tiny_prompt), with the
    32-channel VAE folder, the test images, the case's indices and overlap, and `steps` sampler steps."""
    from allegro_devtools.workflow_api import workflow_to_prompt
    from allegro_devtools.workflow_check import WORKFLOW_DIR, load_workflow, tiny_prompt
    name, _, conditioning, _, _, indices = CASES[case]
    workflow = load_workflow(WORKFLOW_DIR / f"{name}.json")
    graph = tiny_prompt(workflow_to_prompt(workflow, comfy.object_info()), "first.png",
                        "last.png" if case == "first+last" else None)
    for node_id, node in graph.items():
        inputs = node["inputs"]
        if node["class_type"] in ("AllegroVideo_VAELoader", "AllegroVideo_ModelLoader"):
            inputs["vae_name" if "vae_name" in inputs else "model_name"] = "diffusers/Allegro-TI2V-tiny32"
        elif node["class_type"] == "AllegroVideo_Sampler":
            inputs["steps"] = steps
        elif node["class_type"] == "LoadImage" and case == "keyframes":
            inputs["image"] = KEYFRAME_LOADS[node_id] + ".png"
        elif node["class_type"] in ("AllegroVideo_TI2VContinue", "AllegroVideo_JoinClips"):
            inputs["overlap_frames"] = CONTINUATION_OVERLAP
    if case == "keyframes":
        graph[conditioning]["inputs"]["indices"] = ", ".join(map(str, indices))
    return graph


def run_ours(work: Path, steps: int):
    """This package, through ComfyUI's executor: the shipped TI2V workflows on the tiny weights."""
    from diffusers import AutoencoderKLAllegro
    from PIL import Image

    from allegro.prompt import apply_template
    from allegro_devtools.inprocess import InProcessComfy
    from allegro_devtools.random_models import write_all
    from allegro_devtools.runtime import prepare_base_dir
    base = prepare_base_dir(work / "comfy")
    folder = write_all(base / "models")["diffusers_ti2v"].parent / "Allegro-TI2V-tiny32"
    if not folder.exists():
        import shutil
        shutil.copytree(folder.parent / "Allegro-TI2V-tiny", folder)
        shutil.rmtree(folder / "vae")
        torch.manual_seed(11)
        AutoencoderKLAllegro(block_out_channels=(32,) * 4, layers_per_block=1, norm_num_groups=32, latent_channels=4,
                             sample_size=SIZE).save_pretrained(folder / "vae")
    for name, pixels in test_images().items():
        Image.fromarray(pixels).save(base / "input" / f"{name}.png")
    comfy = InProcessComfy.boot(base)
    strings, tensors = {"folder": str(folder)}, {}
    for case, (_, sampler, conditioning, decode, text, _) in CASES.items():
        graph = case_graph(comfy, case, steps)
        targets = [sampler, conditioning, decode] + (["8"] if case == "continuation" else [])
        result = comfy.run(graph, targets=targets)
        assert result.status == "success", result.error
        strings[f"{key(case)}.prompt"] = apply_template(graph[text]["inputs"]["prompt"])
        strings[f"{key(case)}.negative"] = graph[text]["inputs"]["negative_prompt"]
        strings[f"{key(case)}.seed"] = str(graph[sampler]["inputs"]["seed"])
        positive, negative = result.output(conditioning, 0), result.output(conditioning, 1)
        values = {"latent": result.output(sampler)["samples"], "frames": result.output(decode),
                  "pos": positive[0][0], "pos_mask": positive[0][1]["attention_mask"],
                  "neg": negative[0][0], "neg_mask": negative[0][1]["attention_mask"],
                  "masked": positive[0][1]["allegro_masked_video"], "mask": positive[0][1]["allegro_frame_mask"]}
        if case == "continuation":
            values["previous"] = result.output("8")                      # clip 1's decoded frames
        tensors.update({f"{key(case)}.{name}": value.contiguous() for name, value in values.items()})
    # Handed to the other process as safetensors (tensors) with the strings as metadata: no pickles.
    save_file(tensors, work / "ours.safetensors", metadata={"strings": json.dumps(strings)})


def load_ours(work: Path) -> tuple[dict, dict]:
    """What run_ours saved: the strings, and per case its tensors."""
    with safe_open(work / "ours.safetensors", "pt") as f:
        strings = json.loads(f.metadata()["strings"])
        tensors = {case: {k[len(key(case)) + 1:]: f.get_tensor(k) for k in f.keys() if k.startswith(key(case) + ".")}
                   for case in CASES}
    return strings, tensors


def import_original_allegro(original: Path) -> None:
    """Make `allegro` the original checkout's package (a namespace package whose modules import each other as
    `allegro.…`), without adding the checkout to the import path, where this repository's `allegro` comes first."""
    spec = importlib.machinery.PathFinder.find_spec("allegro", [str(original)])
    if spec is None:
        raise SystemExit(f"no allegro/ package in {original}: pass a checkout of github.com/rhymes-ai/Allegro")
    sys.modules["allegro"] = importlib.util.module_from_spec(spec)


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames in 0..1 as the original pipeline returns them: times 255, truncated to uint8."""
    return (frames.clamp(0, 1) * 255).to(torch.uint8)


def run_original(work: Path, original: Path, steps: int):
    import_original_allegro(original)
    import allegro.models.transformers.block as block
    block.sdpa_kernel = lambda *args, **kwargs: contextlib.nullcontext()     # CPU: no flash kernel to force
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mean    # posterior mean, as ours
    from allegro.models.transformers.transformer_3d_allegro_ti2v import AllegroTransformerTI2V3DModel
    from allegro.models.vae.vae_allegro import AllegroAutoencoderKL3D
    from allegro.pipelines.data_process import CenterCropResizeVideo, ToTensorVideo
    from allegro.pipelines.pipeline_allegro_ti2v import AllegroTI2VPipeline
    from diffusers.schedulers import EulerAncestralDiscreteScheduler
    from safetensors.torch import load_file
    from torchvision.transforms import Compose, Lambda
    from transformers import T5EncoderModel, T5Tokenizer

    strings, ours = load_ours(work)
    folder = Path(strings["folder"])
    vae_config = AllegroAutoencoderKL3D.load_config(folder / "vae")
    vae = AllegroAutoencoderKL3D.from_config(vae_config)
    vae.load_state_dict(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"), strict=True)
    vae.eval().scale_factor = 0.13      # what the hub's config says; the class default (0.13235) is never used there
    pipe = AllegroTI2VPipeline(
        vae=vae, scheduler=EulerAncestralDiscreteScheduler(), tokenizer=T5Tokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder", use_safetensors=True).eval(),
        transformer=AllegroTransformerTI2V3DModel.from_pretrained(folder / "transformer", torch_dtype=torch.float32).eval())
    crop_resize = Compose([CenterCropResizeVideo((SIZE, SIZE)), Lambda(lambda x: 2.0 * x - 1.0)])
    to_model = Compose([ToTensorVideo(), crop_resize])          # single_inference_ti2v.py's transform for uint8 images
    images = {k: to_model(torch.from_numpy(v.copy()).permute(2, 0, 1).unsqueeze(0)) for k, v in test_images().items()}
    common = dict(num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=CFG,
                  max_sequence_length=512, output_type="latents", verbose=False)
    print("| case | indices | text emb | masked-video latent | frame mask | sampled latent: own inputs | same inputs "
          "| frames (1/255 steps) | frames not clipped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, (*_, indices) in CASES.items():
        mine, name = ours[case], key(case)
        if case == "continuation":       # clip 1's last frames, already 0..1 floats: the same crop/resize, no /255
            previous = mine["previous"][-CONTINUATION_OVERLAP:].movedim(-1, 1)
            conditional = [crop_resize(frame[None]) for frame in previous]
        else:
            conditional = [images[k] for k in {"first frame": ["first"], "first+last": ["first", "last"],
                                                "keyframes": ["first", "kf2", "kf3"]}[case]]
        prompt, negative, seed = strings[f"{name}.prompt"], strings[f"{name}.negative"], int(strings[f"{name}.seed"])
        with torch.no_grad():
            pe, _, ne, _ = pipe.encode_prompt(prompt, True, negative_prompt=negative, device="cpu",
                                              clean_caption=True, max_sequence_length=512)
            mask, masked = pipe.prepare_mask_masked_video(conditional, indices, FRAMES, 1, SIZE, SIZE, 1, device="cpu")
            latents = pipe(prompt, negative_prompt=negative, conditional_images=conditional,
                           conditional_images_indices=indices, generator=torch.Generator("cpu").manual_seed(seed),
                           **common).video
            frames = pipe.decode_latents(latents)[0]                  # uint8 [T, H, W, C], as the original returns
            own_prep = pipe.prepare_mask_masked_video
            pipe.prepare_mask_masked_video = lambda *a, **k: (mine["mask"].clone(), mine["masked"] * 0.13)
            fed = pipe(None, negative_prompt=None, prompt_embeds=mine["pos"], prompt_attention_mask=mine["pos_mask"],
                       negative_prompt_embeds=mine["neg"], negative_prompt_attention_mask=mine["neg_mask"],
                       conditional_images=conditional, conditional_images_indices=indices,
                       generator=torch.Generator("cpu").manual_seed(seed), **common).video / 0.13
            pipe.prepare_mask_masked_video = own_prep
        theirs = latents / 0.13
        scale = theirs.abs().max().item()
        text = max((pe - mine["pos"]).abs().max().item(), (ne - mine["neg"]).abs().max().item())
        levels = (to_uint8(mine["frames"]).int() - frames.int()).abs().max().item()
        unclipped = ((frames > 0) & (frames < 255)).float().mean().item()
        print(f"| {case} | {indices} | {text:.2g} | {(masked / 0.13 - mine['masked']).abs().max().item():.2g} "
              f"| {(mask - mine['mask']).abs().max().item():.2g} "
              f"| {(theirs - mine['latent']).abs().max().item() / scale:.2g} "
              f"| {(fed - mine['latent']).abs().max().item() / scale:.2g} | {levels} | {unclipped:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", type=Path, required=True, help="a checkout of github.com/rhymes-ai/Allegro")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--phase", choices=["ours", "original"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "ours":
        return run_ours(args.work, args.steps)
    if args.phase == "original":
        return run_original(args.work, args.original, args.steps)
    with tempfile.TemporaryDirectory() as work:
        for phase in ("ours", "original"):
            subprocess.run([sys.executable, "-m", MODULE, "--phase", phase, "--work", work, "--original",
                            str(args.original), "--steps", str(args.steps)], check=True, cwd=REPO,
                           stderr=subprocess.DEVNULL if phase == "ours" else None, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    print(f"\nCommand: .venv/bin/python -m {MODULE} --original {args.original} --steps {args.steps}")


if __name__ == "__main__":
    main()
