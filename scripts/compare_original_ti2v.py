"""Compare this package's TI2V graph with the original rhymes-ai/Allegro TI2V pipeline on the same tiny weights.

    git clone https://github.com/rhymes-ai/Allegro /path/to/Allegro      # the original code (not installed)
    .venv/bin/python -m scripts.compare_original_ti2v --original /path/to/Allegro [--steps 2]

Both sides get the same tiny hub-layout checkpoint (allegro_devtools.random_models; its VAE is swapped for a
32-channel one because the original VAE hard-codes GroupNorm(32)), the same two images, prompt, seed
(1427329220), CFG 8 and size 240x240x24, and both encode the conditioning with the posterior mean. The
original package is also called `allegro`, so each side runs in its own process. Printed: the text
embeddings, masked-video latents and frame mask, and the sampled latents — once from each side's own
inputs and once with the original pipeline fed this package's inputs (isolating the sampler arithmetic).
"""
import argparse
import contextlib
import importlib.machinery
import importlib.util
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
SIZE, FRAMES, SEED, CFG = 240, 24, 1427329220, 8.0


def test_images() -> dict:
    rng = np.random.default_rng(0)
    return {"first": np.linspace(0, 255, 200 * 320 * 3).reshape(200, 320, 3).astype(np.uint8),
            "last": rng.integers(0, 255, (300, 180, 3), dtype=np.uint8)}


def run_ours(work: Path, steps: int):
    """This package, through ComfyUI's executor: the shipped TI2V workflows on the tiny weights."""
    from diffusers import AutoencoderKLAllegro
    from PIL import Image

    from allegro.prompt import apply_template
    from allegro_devtools.inprocess import InProcessComfy
    from allegro_devtools.random_models import write_all
    from allegro_devtools.runtime import prepare_base_dir
    from allegro_devtools.workflow_api import workflow_to_prompt
    from allegro_devtools.workflow_check import WORKFLOW_DIR, load_workflow, tiny_prompt
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
    out = {"folder": str(folder)}
    for with_last in (False, True):
        workflow = load_workflow(WORKFLOW_DIR / ("allegro_ti2v_first_last.json" if with_last else "allegro_ti2v.json"))
        graph = tiny_prompt(workflow_to_prompt(workflow, comfy.object_info()), "first.png",
                            "last.png" if with_last else None)
        sampler, conditioning = (next(i for i, n in graph.items() if n["class_type"] == kind)
                                 for kind in ("AllegroVideo_Sampler", "AllegroVideo_TI2VConditioning"))
        for node in graph.values():
            inputs = node["inputs"]
            if node["class_type"] in ("AllegroVideo_VAELoader", "AllegroVideo_ModelLoader"):
                inputs["vae_name" if "vae_name" in inputs else "model_name"] = "diffusers/Allegro-TI2V-tiny32"
            elif node["class_type"] == "AllegroVideo_Sampler":
                inputs["steps"] = steps
            elif node["class_type"] == "AllegroVideo_TextEncode":
                out["prompt"], out["negative"] = apply_template(inputs["prompt"]), inputs["negative_prompt"]
        result = comfy.run(graph, targets=[sampler, conditioning])
        assert result.status == "success", result.error
        positive, negative = result.output(conditioning, 0), result.output(conditioning, 1)
        out[with_last] = {"latent": result.output(sampler)["samples"],
                          "pos": positive[0][0], "pos_mask": positive[0][1]["attention_mask"],
                          "neg": negative[0][0], "neg_mask": negative[0][1]["attention_mask"],
                          "masked": positive[0][1]["allegro_masked_video"], "mask": positive[0][1]["allegro_frame_mask"]}
    # Handed to the other process as safetensors (tensors) with the strings as metadata: no pickles.
    tensors = {f"{'last' if with_last else 'first'}.{name}": value.contiguous()
               for with_last in (False, True) for name, value in out.pop(with_last).items()}
    save_file(tensors, work / "ours.safetensors", metadata=out)


def load_ours(work: Path) -> dict:
    """What run_ours saved: the strings, and per case (False: first frame, True: first+last) its tensors."""
    with safe_open(work / "ours.safetensors", "pt") as f:
        ours = dict(f.metadata())
        for with_last in (False, True):
            prefix = "last." if with_last else "first."
            ours[with_last] = {key[len(prefix):]: f.get_tensor(key) for key in f.keys() if key.startswith(prefix)}
    return ours


def import_original_allegro(original: Path) -> None:
    """Make `allegro` the original checkout's package (a namespace package whose modules import each other as
    `allegro.…`), without adding the checkout to the import path, where this repository's `allegro` comes first."""
    spec = importlib.machinery.PathFinder.find_spec("allegro", [str(original)])
    if spec is None:
        raise SystemExit(f"no allegro/ package in {original}: pass a checkout of github.com/rhymes-ai/Allegro")
    sys.modules["allegro"] = importlib.util.module_from_spec(spec)


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

    ours = load_ours(work)
    folder = Path(ours["folder"])
    vae_config = AllegroAutoencoderKL3D.load_config(folder / "vae")
    vae = AllegroAutoencoderKL3D.from_config(vae_config)
    vae.load_state_dict(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"), strict=True)
    vae.eval().scale_factor = 0.13      # what the hub's config says; the class default (0.13235) is never used there
    pipe = AllegroTI2VPipeline(
        vae=vae, scheduler=EulerAncestralDiscreteScheduler(), tokenizer=T5Tokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder", use_safetensors=True).eval(),
        transformer=AllegroTransformerTI2V3DModel.from_pretrained(folder / "transformer", torch_dtype=torch.float32).eval())
    to_model = Compose([ToTensorVideo(), CenterCropResizeVideo((SIZE, SIZE)), Lambda(lambda x: 2.0 * x - 1.0)])
    images = {k: to_model(torch.from_numpy(v.copy()).permute(2, 0, 1).unsqueeze(0)) for k, v in test_images().items()}
    common = dict(num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=CFG,
                  max_sequence_length=512, output_type="latents", verbose=False)
    print("| case | text emb | masked-video latent | frame mask | sampled latent (own inputs) | same inputs | latent max |")
    print("|---|---|---|---|---|---|---|")
    for with_last in (False, True):
        mine = ours[with_last]
        conditional = [images["first"]] + ([images["last"]] if with_last else [])
        indices = [0, -1] if with_last else [0]
        with torch.no_grad():
            pe, _, ne, _ = pipe.encode_prompt(ours["prompt"], True, negative_prompt=ours["negative"], device="cpu",
                                              clean_caption=True, max_sequence_length=512)
            mask, masked = pipe.prepare_mask_masked_video(conditional, indices, FRAMES, 1, SIZE, SIZE, 1, device="cpu")
            theirs = pipe(ours["prompt"], negative_prompt=ours["negative"], conditional_images=conditional,
                          conditional_images_indices=indices, generator=torch.Generator("cpu").manual_seed(SEED),
                          **common).video / 0.13
            own_prep = pipe.prepare_mask_masked_video
            pipe.prepare_mask_masked_video = lambda *a, **k: (mine["mask"].clone(), mine["masked"] * 0.13)
            fed = pipe(None, negative_prompt=None, prompt_embeds=mine["pos"], prompt_attention_mask=mine["pos_mask"],
                       negative_prompt_embeds=mine["neg"], negative_prompt_attention_mask=mine["neg_mask"],
                       conditional_images=conditional, conditional_images_indices=indices,
                       generator=torch.Generator("cpu").manual_seed(SEED), **common).video / 0.13
            pipe.prepare_mask_masked_video = own_prep
        text = max((pe - mine["pos"]).abs().max().item(), (ne - mine["neg"]).abs().max().item())
        print(f"| {'first+last' if with_last else 'first'} frame | {text:.2g} | {(masked / 0.13 - mine['masked']).abs().max().item():.2g} "
              f"| {(mask - mine['mask']).abs().max().item():.2g} | {(theirs - mine['latent']).abs().max().item():.2g} "
              f"| {(fed - mine['latent']).abs().max().item():.2g} | {theirs.abs().max().item():.3g} |")


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
