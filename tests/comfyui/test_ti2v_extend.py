"""Continuing a video and joining the clips, through the real ComfyUI executor on the tiny weights:
the shipped workflows/allegro_ti2v_extend.json (clip 1 → 'Allegro TI2V Continue Video' from its last
frames → clip 2 → 'Allegro Join Clips'), the continuation conditioning against the original
pipeline's algorithm worked by hand (the last K frames at indices 0..K-1: its training's
continuation mask), the join arithmetic, and the errors for overlaps that do not fit."""
import pytest
import torch

from allegro.ti2v import prepare_image
from allegro.vae_tiling import tiled_encode
from allegro_devtools.workflow_api import workflow_to_prompt
from allegro_devtools.workflow_check import TINY_SIZE, TINY_T2V, WORKFLOW_DIR, load_workflow, tiny_prompt
from numerics import assert_relative

pytestmark = pytest.mark.slow

FRAMES, HEIGHT, WIDTH = TINY_SIZE["length"], TINY_SIZE["height"], TINY_SIZE["width"]
LATENT_FRAMES = FRAMES // 4
# Node ids in workflows/allegro_ti2v_extend.json (scripts/build_workflows.py).
VAE, DECODE_1, CONTINUE, DECODE_2, JOIN = "7", "8", "21", "23", "24"


class FixedFrames:
    """A constant IMAGE source for the graphs below (ComfyUI's executor runs it like any node)."""
    frames: torch.Tensor
    CATEGORY = "Allegro/tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "get"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"which": ("STRING", {"default": "a"})}}

    def get(self, which):
        return (FixedFrames.sources[which].clone(),)


FixedFrames.sources = {
    "a": torch.rand(10, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(0)),
    "b": torch.rand(10, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(1)),
    "small": torch.rand(10, 160, WIDTH, 3, generator=torch.Generator().manual_seed(2)),
}


@pytest.fixture(scope="module")
def fixed_frames(comfy):
    import nodes as comfy_nodes
    comfy_nodes.NODE_CLASS_MAPPINGS.setdefault("AllegroTestFixedFrames", FixedFrames)
    return FixedFrames.sources


@pytest.fixture(scope="module")
def extend_run(comfy, tiny_models, base_dir):
    """The shipped extend workflow at the tiny size: (graph, result) with both clips and the join."""
    import numpy as np
    from PIL import Image
    gradient = np.linspace(0, 255, 200 * 320 * 3).reshape(200, 320, 3).astype(np.uint8)
    Image.fromarray(gradient).save(base_dir / "input" / "extend_first.png")
    workflow = load_workflow(WORKFLOW_DIR / "allegro_ti2v_extend.json")
    graph = tiny_prompt(workflow_to_prompt(workflow, comfy.object_info()), "extend_first.png")
    result = comfy.run(graph, targets=[VAE, DECODE_1, CONTINUE, DECODE_2, JOIN])
    assert result.status == "success", result.error
    return graph, result


def test_the_shipped_workflow_joins_two_clips_into_one_video(extend_run):
    """The shipped extend workflow joins two clips: outside the overlap each clip's own frames, in it their blend.
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): blend 0; bound 1e-6."""
    graph, result = extend_run
    overlap = graph[JOIN]["inputs"]["overlap_frames"]
    assert overlap == graph[CONTINUE]["inputs"]["overlap_frames"] == 4
    assert graph[JOIN]["inputs"]["mode"] == "blend"
    first, second, joined = result.output(DECODE_1), result.output(DECODE_2), result.output(JOIN)
    assert first.shape == second.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert joined.shape == (2 * FRAMES - overlap, HEIGHT, WIDTH, 3)
    assert torch.equal(joined[:FRAMES - overlap], first[:FRAMES - overlap])
    assert torch.equal(joined[FRAMES:], second[overlap:])
    weight = (torch.arange(1, overlap + 1) / (overlap + 1)).view(-1, 1, 1, 1)
    expected = first[-overlap:] * (1 - weight) + second[:overlap] * weight
    assert_relative(joined[FRAMES - overlap:FRAMES], expected, 1e-6, "blend")


def test_the_continuation_equals_the_original_algorithm_by_hand(extend_run):
    """Clip 2's conditioning: clip 1's last K decoded frames at frames 0..K-1 of a black video, encoded; the
    mask 0 at those frames (channel 0, latent frames 0..K-1).
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 (the same encoder on the same
    frames); bound 1e-5."""
    graph, result = extend_run
    overlap = graph[CONTINUE]["inputs"]["overlap_frames"]
    first, values = result.output(DECODE_1), result.output(CONTINUE, 0)[0][1]
    video = torch.zeros(1, 3, FRAMES, HEIGHT, WIDTH)
    for index in range(overlap):
        video[0, :, index] = prepare_image(first[FRAMES - overlap + index], HEIGHT, WIDTH)
    with torch.no_grad():
        expected = tiled_encode(result.output(VAE).first_stage_model, video)
    assert_relative(values["allegro_masked_video"], expected, 1e-5)
    mask = torch.ones(4, LATENT_FRAMES)
    mask[0, :overlap] = 0
    assert torch.equal(values["allegro_frame_mask"][0, :, :, 0, 0], mask)
    assert result.output(CONTINUE, 2)["samples"].shape == (1, 4, LATENT_FRAMES, HEIGHT // 8, WIDTH // 8)


def continue_graph(source: str, overlap: int, length: int = FRAMES, last: str | None = None) -> dict:
    graph = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": TINY_T2V, "dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": "the scene goes on", "negative_prompt": "", "use_template": False,
            "clean_caption": False}},
        "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": TINY_T2V, "dtype": "fp32"}},
        "frames": {"class_type": "AllegroTestFixedFrames", "inputs": {"which": source}},
        "cond": {"class_type": "AllegroVideo_TI2VContinue", "inputs": {
            "positive": ["text", 0], "negative": ["text", 1], "vae": ["vae", 0], "previous_frames": ["frames", 0],
            "overlap_frames": overlap, "width": WIDTH, "height": HEIGHT, "length": length, "resize": "crop"}},
    }
    if last is not None:
        graph["last"] = {"class_type": "AllegroTestFixedFrames", "inputs": {"which": last}}
        graph["last_one"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["last", 0], "batch_index": 0,
                                                                         "length": 1}}
        graph["cond"]["inputs"]["last_frame"] = ["last_one", 0]
    return graph


def test_continuation_with_an_end_frame_and_another_size_of_previous_frames(comfy, tiny_models, fixed_frames):
    """The previous frames are 240x160 here: cropped and resized like any conditioning image; a last frame
    goes to the new clip's last frame.
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0; bound 1e-5."""
    result = comfy.run(continue_graph("small", 6, last="b"), targets=["cond", "vae"])
    assert result.status == "success", result.error
    values = result.output("cond", 0)[0][1]
    video = torch.zeros(1, 3, FRAMES, HEIGHT, WIDTH)
    for index in range(6):
        video[0, :, index] = prepare_image(fixed_frames["small"][4 + index], HEIGHT, WIDTH)
    video[0, :, FRAMES - 1] = prepare_image(fixed_frames["b"][0], HEIGHT, WIDTH)
    with torch.no_grad():
        expected = tiled_encode(result.output("vae").first_stage_model, video)
    assert_relative(values["allegro_masked_video"], expected, 1e-5)
    mask = torch.ones(4, LATENT_FRAMES)
    mask[0, :6] = 0
    mask[3, LATENT_FRAMES - 1] = 0
    assert torch.equal(values["allegro_frame_mask"][0, :, :, 0, 0], mask)


@pytest.mark.parametrize("overlap,length,message", [
    (12, FRAMES, "overlap_frames (12) is larger than the previous clip, which holds 10 frames: use at most 10"),
    (8, 8, "overlap_frames (8) must be smaller than the new clip's length (8)"),
])
def test_an_overlap_larger_than_a_clip_is_a_clear_error(comfy, tiny_models, fixed_frames, overlap, length, message):
    result = comfy.run(continue_graph("a", overlap, length), targets=["cond"])
    assert result.status == "error"
    assert message in result.error["exception_message"]


def join_graph(previous: str, following: str, overlap: int, mode: str) -> dict:
    return {"p": {"class_type": "AllegroTestFixedFrames", "inputs": {"which": previous}},
            "n": {"class_type": "AllegroTestFixedFrames", "inputs": {"which": following}},
            "join": {"class_type": "AllegroVideo_JoinClips", "inputs": {
                "previous": ["p", 0], "next": ["n", 0], "overlap_frames": overlap, "mode": mode}}}


def test_join_drop_keeps_the_previous_frames(comfy, fixed_frames):
    result = comfy.run(join_graph("a", "b", 3, "drop"), targets=["join"])
    assert result.status == "success", result.error
    joined = result.output("join")
    assert torch.equal(joined, torch.cat([fixed_frames["a"], fixed_frames["b"][3:]]))


@pytest.mark.parametrize("following,overlap,message", [
    ("small", 2, "The clips differ in size: previous frames are 240x240 with 3 channels, next frames 240x160"),
    ("b", 11, "overlap_frames (11) must be from 0 to the shorter clip's length (10 frames"),
])
def test_clips_that_do_not_fit_are_a_clear_error(comfy, fixed_frames, following, overlap, message):
    result = comfy.run(join_graph("a", following, overlap, "blend"), targets=["join"])
    assert result.status == "error"
    assert message in result.error["exception_message"]
