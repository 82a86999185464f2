"""Image-to-video through the real ComfyUI executor with the tiny Allegro-TI2V weights: the shipped
workflows (core LoadImage → TI2V conditioning → Allegro sampler or stock KSampler → decode). The
conditioning reaches the model (first and last frame matter where they should), and T2V/TI2V mix-ups
are clear errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from allegro_devtools.workflow_check import (TINY_SIZE, TINY_STEPS, TINY_TI2V as TI2V, WORKFLOW_DIR,
                                            load_workflow, tiny_prompt)
from allegro_devtools.workflow_api import workflow_to_prompt

pytestmark = pytest.mark.slow

FRAMES, HEIGHT, WIDTH, STEPS = TINY_SIZE["length"], TINY_SIZE["height"], TINY_SIZE["width"], TINY_STEPS
# Node ids in workflows/allegro_ti2v*.json (scripts/build_workflows.py).
TEXT, MODEL, SAMPLER, DECODE, CONDITIONING = "3", "4", "6", "8", "10"


@pytest.fixture(scope="module")
def images(base_dir):
    """Three PNGs in ComfyUI's input folder: a gradient, its negative, and an RGBA one."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 320 * 200 * 3).reshape(200, 320, 3).astype(np.uint8)
    names = {"first.png": gradient, "other.png": 255 - gradient,
             "last.png": rng.integers(0, 255, (300, 180, 3), dtype=np.uint8)}
    for name, pixels in names.items():
        Image.fromarray(pixels).save(base_dir / "input" / name)
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8), "RGBA").save(base_dir / "input" / "alpha.png")
    return names


def ti2v_graph(comfy, first="first.png", last=None, model=TI2V, stock_sampler=False, with_ti2v=True):
    """The shipped workflow (allegro_ti2v, or allegro_ti2v_first_last with a last image) as the front-end
    would queue it, on the tiny weights at 240x240x24 with 2 steps; then the variations a test asks for."""
    name = "allegro_ti2v_first_last" if last else "allegro_ti2v"
    workflow = load_workflow(WORKFLOW_DIR / f"{name}.json")
    graph = tiny_prompt(workflow_to_prompt(workflow, comfy.object_info()), first, last)
    graph[MODEL]["inputs"]["model_name"] = model
    sample = graph[SAMPLER]["inputs"]
    assert (sample["seed"], sample["cfg"], graph[CONDITIONING]["inputs"]["length"]) == (1427329220, 8.0, FRAMES)
    if not with_ti2v:
        sample.update(positive=[TEXT, 0], negative=[TEXT, 1])
    if stock_sampler:
        graph[SAMPLER] = {"class_type": "KSampler", "inputs": {
            "model": sample["model"], "positive": sample["positive"], "negative": sample["negative"],
            "latent_image": sample["latent"], "seed": 1427329220, "steps": STEPS, "cfg": 8.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0}}
    return graph


def frames_of(comfy, graph) -> torch.Tensor:
    result = comfy.run(graph, targets=[DECODE])
    assert result.status == "success", result.error
    return result.output(DECODE)


def per_frame_change(a, b):
    return (a - b).abs().mean(dim=(1, 2, 3))


def test_first_frame_workflow_makes_the_video(comfy, tiny_models, images):
    video = frames_of(comfy, ti2v_graph(comfy))
    assert video.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert torch.isfinite(video).all() and video.std() > 0.01


def test_changing_the_first_image_changes_the_first_frames_most(comfy, tiny_models, images):
    base = frames_of(comfy, ti2v_graph(comfy))
    other = frames_of(comfy, ti2v_graph(comfy, first="other.png"))
    change = per_frame_change(base, other)
    assert change.max() > 1e-3
    assert change[:4].mean() > change[-4:].mean()


def test_changing_the_last_image_changes_the_output(comfy, tiny_models, images):
    with_last = frames_of(comfy, ti2v_graph(comfy, last="last.png"))
    other_last = frames_of(comfy, ti2v_graph(comfy, last="other.png"))
    assert with_last.shape == (FRAMES, HEIGHT, WIDTH, 3)
    change = per_frame_change(with_last, other_last)
    assert change.max() > 1e-3
    assert change[-4:].mean() > change[:4].mean()
    without_last = frames_of(comfy, ti2v_graph(comfy))
    assert per_frame_change(with_last, without_last).max() > 1e-3


def test_stock_ksampler_runs_ti2v_and_alpha_images_work(comfy, tiny_models, images):
    video = frames_of(comfy, ti2v_graph(comfy, first="alpha.png", stock_sampler=True))
    assert video.shape == (FRAMES, HEIGHT, WIDTH, 3) and torch.isfinite(video).all()


@pytest.mark.parametrize("model,with_ti2v,message", [
    ("diffusers/Allegro-tiny", True, "loaded model is Allegro T2V"),
    (TI2V, False, "Allegro-TI2V needs image conditioning"),
])
def test_t2v_and_ti2v_mixups_are_clear_errors(comfy, tiny_models, images, model, with_ti2v, message):
    graph = ti2v_graph(comfy, model=model, with_ti2v=with_ti2v)
    if not with_ti2v:
        graph["latent"] = {"class_type": "AllegroVideo_EmptyLatentVideo", "inputs": {
            "width": WIDTH, "height": HEIGHT, "length": FRAMES, "batch_size": 1}}
        graph[SAMPLER]["inputs"]["latent"] = ["latent", 0]
        image = graph[CONDITIONING]["inputs"]["first_frame"][0]
        del graph[CONDITIONING], graph[image]
    result = comfy.run(graph, targets=[DECODE])
    assert result.status == "error"
    assert message in result.error["exception_message"]


def test_a_vae_with_another_latent_scale_is_a_clear_error(comfy, tiny_models, images):
    """The TI2V conditioning is in the VAE's latent space; a model sampling at another scale would read it
    wrongly, so the mix is refused, naming both scales."""
    import json
    from safetensors.torch import load_file, save_file
    path = tiny_models["vae_file"].with_name("allegro_tiny_vae_scale_0.5.safetensors")
    if not path.exists():
        config = json.loads(json.dumps({"scaling_factor": 0.5, "norm_num_groups": 4, "sample_size": 240}))
        save_file(load_file(tiny_models["vae_file"]), path, metadata={"config": json.dumps(config)})
    graph = ti2v_graph(comfy)
    vae_node = next(key for key, node in graph.items() if node["class_type"] == "AllegroVideo_VAELoader")
    graph[vae_node]["inputs"]["vae_name"] = path.name
    result = comfy.run(graph, targets=[DECODE])
    assert result.status == "error"
    assert "latent scale is 0.5, but the model samples at 0.13" in result.error["exception_message"]
