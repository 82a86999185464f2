"""Keyframes at any frames and images of any aspect, through the real ComfyUI executor on the tiny
Allegro-TI2V weights: the conditioning the nodes make equals the original pipeline's algorithm worked
by hand (its `input_video` with each image at its `conditional_images_indices`, VAE-encoded; its
per-frame mask folded to [4, T']), the keyframes steer the video where they are, and the inputs a
user can get wrong are refused with what to do."""
import numpy as np
import pytest
import torch
from PIL import Image

from allegro.ti2v import prepare_image
from allegro.vae_tiling import tiled_encode
from allegro_devtools.workflow_check import TINY_SIZE, TINY_STEPS, TINY_T2V, TINY_TI2V
from numerics import assert_relative

pytestmark = pytest.mark.slow

FRAMES, HEIGHT, WIDTH = TINY_SIZE["length"], TINY_SIZE["height"], TINY_SIZE["width"]
LATENT_FRAMES = FRAMES // 4
IMAGES = {"kf_a.png": (200, 320, 0), "kf_b.png": (200, 320, 1), "kf_c.png": (200, 320, 2), "kf_tall.png": (320, 180, 3)}


@pytest.fixture(scope="module")
def images(base_dir) -> dict[str, torch.Tensor]:
    """PNGs in ComfyUI's input folder (three of one size, one portrait) and the IMAGE frames Load Image gives."""
    loaded = {}
    for name, (height, width, seed) in IMAGES.items():
        pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
        pixels[: height // 2] //= 3                      # some structure: a darker top half
        Image.fromarray(pixels).save(base_dir / "input" / name)
        loaded[name] = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    return loaded


def graph(conditioning: dict, sample: bool = False) -> dict:
    """Tiny T5 → text encode, tiny VAE, the given TI2V node as "cond" (its own image nodes included);
    with `sample`: the TI2V model, 2 sampler steps and the decode."""
    nodes = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": TINY_T2V, "dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": "a fox in the snow", "negative_prompt": "blurry", "use_template": False,
            "clean_caption": False}},
        "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": TINY_T2V, "dtype": "fp32"}},
        **conditioning,
    }
    nodes["cond"]["inputs"].update(positive=["text", 0], negative=["text", 1], vae=["vae", 0])
    if sample:
        nodes.update({
            "dit": {"class_type": "AllegroVideo_ModelLoader",
                    "inputs": {"model_name": TINY_TI2V, "weight_dtype": "fp32"}},
            "sample": {"class_type": "AllegroVideo_Sampler", "inputs": {
                "model": ["dit", 0], "positive": ["cond", 0], "negative": ["cond", 1], "latent": ["cond", 2],
                "seed": 1427329220, "steps": TINY_STEPS, "cfg": 8.0, "sampler_name": "euler_ancestral",
                "scheduler": "linspace (reference)", "noise_stream": "reference", "denoise": 1.0}},
            "decode": {"class_type": "AllegroVideo_VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        })
    return nodes


def load(name: str) -> dict:
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def keyframes_node(names: list[str], indices: str, resize: str = "crop", length: int = FRAMES) -> dict:
    """Load Image per name → core Batch Images chain → Allegro TI2V Keyframes."""
    nodes = {f"img{i}": load(name) for i, name in enumerate(names)}
    source = ["img0", 0]
    for i in range(1, len(names)):
        nodes[f"batch{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": source, "image2": [f"img{i}", 0]}}
        source = [f"batch{i}", 0]
    nodes["cond"] = {"class_type": "AllegroVideo_TI2VKeyframes", "inputs": {
        "images": source, "indices": indices, "width": WIDTH, "height": HEIGHT, "length": length, "resize": resize}}
    return nodes


def first_frame_node(name: str, resize: str | None) -> dict:
    inputs = {"first_frame": ["img0", 0], "width": WIDTH, "height": HEIGHT, "length": FRAMES}
    if resize is not None:
        inputs["resize"] = resize
    return {"img0": load(name), "cond": {"class_type": "AllegroVideo_TI2VConditioning", "inputs": inputs}}


def conditioning_of(comfy, nodes: dict):
    """(masked-video latent, frame mask, LATENT, the loaded VAE) the TI2V node made."""
    result = comfy.run(nodes, targets=["cond", "vae"])
    assert result.status == "success", result.error
    positive, negative, latent = (result.output("cond", i) for i in range(3))
    values, negative_values = positive[0][1], negative[0][1]
    assert torch.equal(values["allegro_masked_video"], negative_values["allegro_masked_video"])
    return values["allegro_masked_video"], values["allegro_frame_mask"], latent, result.output("vae")


def original_masked_video(vae, images_at: dict[int, torch.Tensor], resize: str = "crop") -> torch.Tensor:
    """The original's masked video by hand: zeros [1, 3, T, H, W] with each prepared image at its frame
    (input_video[:, indices] = images; masked_video = input_video * (mask < 0.5) changes nothing), then
    the whole video VAE-encoded (posterior mean, tiled as the reference)."""
    video = torch.zeros(1, 3, FRAMES, HEIGHT, WIDTH)
    for frame, image in images_at.items():
        video[0, :, frame] = prepare_image(image, HEIGHT, WIDTH, resize)
    with torch.no_grad():
        return tiled_encode(vae.first_stage_model, video)


def hand_mask(frames: list[int]) -> torch.Tensor:
    mask = torch.ones(4, LATENT_FRAMES)
    for frame in frames:
        mask[frame // LATENT_FRAMES, frame % LATENT_FRAMES] = 0
    return mask


def test_keyframes_equal_the_original_algorithm_by_hand(comfy, tiny_models, images):
    """Image i of the batch at indices[i], in the batch's order (here not sorted) and with -1 = the last frame.
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 (the same encoder on the same
    frames); bound 1e-5."""
    masked, mask, latent, vae = conditioning_of(comfy, graph(keyframes_node(["kf_a.png", "kf_b.png", "kf_c.png"],
                                                                            "17, 0, -1")))
    at = {17: images["kf_a.png"], 0: images["kf_b.png"], FRAMES - 1: images["kf_c.png"]}
    assert_relative(masked, original_masked_video(vae, at), 1e-5)
    assert mask.shape == (1, 4, LATENT_FRAMES, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(mask[0, :, :, 0, 0], hand_mask([17, 0, FRAMES - 1]))
    assert (mask == mask[..., :1, :1]).all()
    assert latent["samples"].shape == (1, 4, LATENT_FRAMES, HEIGHT // 8, WIDTH // 8)


def test_first_and_last_through_keyframes_equal_the_first_last_node(comfy, tiny_models, images):
    """'0, -1' is the reference script's first+last-frame call; both nodes make the same conditioning."""
    masked, mask, _, _ = conditioning_of(comfy, graph(keyframes_node(["kf_a.png", "kf_b.png"], "0, -1")))
    nodes = first_frame_node("kf_a.png", "crop")
    nodes["img1"] = load("kf_b.png")
    nodes["cond"]["inputs"]["last_frame"] = ["img1", 0]
    masked_2, mask_2, _, _ = conditioning_of(comfy, graph(nodes))
    assert torch.equal(masked, masked_2) and torch.equal(mask, mask_2)


@pytest.mark.parametrize("resize", ["crop", "pad", "stretch"])
def test_portrait_image_in_each_resize_mode(comfy, tiny_models, images, resize):
    """A portrait 180x320 image into the 240x240 video: each mode's frame, encoded as the original encodes
    its frames (crop is the reference's own).
    Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike): 0 in each mode; bound 1e-5."""
    masked, mask, _, vae = conditioning_of(comfy, graph(first_frame_node("kf_tall.png", resize)))
    assert_relative(masked, original_masked_video(vae, {0: images["kf_tall.png"]}, resize), 1e-5)
    assert torch.equal(mask[0, :, :, 0, 0], hand_mask([0]))


def test_a_workflow_saved_before_resize_existed_still_crops(comfy, tiny_models, images):
    """No 'resize' in the saved inputs (the widget came later, last): the reference crop, as before."""
    old, _, _, _ = conditioning_of(comfy, graph(first_frame_node("kf_tall.png", None)))
    crop, _, _, _ = conditioning_of(comfy, graph(first_frame_node("kf_tall.png", "crop")))
    pad, _, _, _ = conditioning_of(comfy, graph(first_frame_node("kf_tall.png", "pad")))
    assert torch.equal(old, crop) and not torch.equal(old, pad)


def test_a_middle_keyframe_reaches_the_video(comfy, tiny_models, images):
    """Changing only the image at frame 12, or only its index, changes the sampled video. (Where in the video
    a random-weight model puts the change says nothing: its VAE encoder and DiT attention mix all frames.
    Where the image goes is checked exactly above, against the original's algorithm.)"""
    def video(middle, indices="0, 12, -1"):
        result = comfy.run(graph(keyframes_node(["kf_a.png", middle, "kf_c.png"], indices), sample=True),
                           targets=["decode"])
        assert result.status == "success", result.error
        return result.output("decode")
    base = video("kf_b.png")
    assert base.shape == (FRAMES, HEIGHT, WIDTH, 3) and torch.isfinite(base).all()
    assert (base - video("kf_tall.png")).abs().max() > 1e-3
    assert (base - video("kf_b.png", "0, 20, -1")).abs().max() > 1e-3


def test_portrait_source_padded_makes_a_video(comfy, tiny_models, images):
    result = comfy.run(graph(first_frame_node("kf_tall.png", "pad"), sample=True), targets=["decode"])
    assert result.status == "success", result.error
    video = result.output("decode")
    assert video.shape == (FRAMES, HEIGHT, WIDTH, 3) and torch.isfinite(video).all()


@pytest.mark.parametrize("names,indices,message", [
    (["kf_a.png", "kf_b.png"], "0, 24", "Frame index 24 is outside the 24-frame video: use 0 to 23, or -24 to -1"),
    (["kf_a.png", "kf_b.png"], "0, -25", "Frame index -25 is outside the 24-frame video"),
    (["kf_a.png", "kf_b.png"], "0, -24", "Two images on frame 0 (indices 0 and -24)"),
    (["kf_a.png", "kf_b.png"], "7, 7", "Two images on frame 7 (index 7 twice)"),
    (["kf_a.png", "kf_b.png"], "0", "images holds 2 image(s) but indices lists 1 frame(s)"),
    (["kf_a.png"], "0, 12", "images holds 1 image(s) but indices lists 2 frame(s)"),
    (["kf_a.png"], "first", "'first' in the frame indices is not a whole number"),
    (["kf_a.png"], "", "No frame indices given"),
])
def test_bad_keyframe_inputs_are_clear_errors(comfy, tiny_models, images, names, indices, message):
    result = comfy.run(graph(keyframes_node(names, indices)), targets=["cond"])
    assert result.status == "error"
    assert message in result.error["exception_message"]
