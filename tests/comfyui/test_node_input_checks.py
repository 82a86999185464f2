"""Bad input at the later nodes, through ComfyUI's executor: empty latents into 'Allegro VAE
Decode' (both tilings) and the sampler, empty images into the TI2V nodes, Join Clips and VAE Encode, device
names in 'Allegro Multi-GPU', and user text quoted at most a few hundred characters in messages. Each ends
in a message naming the input and what to do, never torch's own error."""
import pytest

from allegro.quoting import QUOTE_LIMIT, quote
from bad_inputs import linked_value, tensor_value
from error_matrix_support import FRAMES, SIZE, T2V, TI2V, decode, show, t2v, text_nodes, ti2v

pytestmark = pytest.mark.slow

RAW_TORCH = ("Expected one of", "size mismatch", "Calculated padded input size", "Kernel size can't be greater",
             "cannot reshape", "Input and output sizes should be greater than 0", "Traceback")


def failure(comfy, graph, node: str) -> str:
    result = comfy.run(graph, targets=[node])
    assert result.status == "error", f"expected an error at {node}"
    message = result.error["exception_message"]
    assert result.error["node_id"] == node, message
    assert not [text for text in RAW_TORCH if text in message], message
    return message


def latent(frames, height=SIZE // 8, width=SIZE // 8):
    return tensor_value([1, 4, frames, height, width], fill=0.0, as_latent=True)


@pytest.mark.parametrize("tiling", ["reference", "auto"])
@pytest.mark.parametrize("shape", [(0, 8, 8), (2, 0, 8), (2, 8, 0)], ids=["0 frames", "height 0", "width 0"])
def test_an_empty_latent_into_the_decode_is_refused(comfy, tiny_models, tiling, shape):
    graph = decode(latent(*shape))
    graph["decode"]["inputs"]["tiling"] = tiling
    message = failure(comfy, graph, "decode")
    assert "'Allegro VAE Decode' got an empty latent" in message and "nothing to decode" in message, message


def test_an_empty_latent_into_the_sampler_is_refused(comfy, tiny_models):
    message = failure(comfy, t2v(latent=latent(0)), "sample")
    assert "The 'latent' input is empty" in message and "frames 0" in message, message


EMPTY_IMAGES = {"height 0": [1, 0, SIZE, 3], "width 0": [1, SIZE, 0, 3], "no image": [0, SIZE, SIZE, 3]}


@pytest.mark.parametrize("shape", list(EMPTY_IMAGES.values()), ids=list(EMPTY_IMAGES))
def test_an_empty_first_frame_is_refused_at_the_ti2v_node(comfy, tiny_models, shape):
    message = failure(comfy, ti2v(image={"image": tensor_value(shape)}), "ti2v")
    assert "'Allegro TI2V Conditioning' got an empty IMAGE as 'first_frame'" in message, message


def keyframes_graph(images: dict, indices="0") -> dict:
    return {**text_nodes(), "vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": TI2V, "dtype": "fp32"}},
            "image": images,
            "keys": {"class_type": "AllegroVideo_TI2VKeyframes", "inputs": {
                "positive": ["text", 0], "negative": ["text", 1], "vae": ["vae", 0], "images": ["image", 0],
                "indices": indices, "width": SIZE, "height": SIZE, "length": FRAMES, "resize": "crop"}},
            "show": show(["keys", 2])}


def continue_graph(frames: dict) -> dict:
    graph = keyframes_graph(frames)
    graph["keys"] = {"class_type": "AllegroVideo_TI2VContinue", "inputs": {
        "positive": ["text", 0], "negative": ["text", 1], "vae": ["vae", 0], "previous_frames": ["image", 0],
        "overlap_frames": 4, "width": SIZE, "height": SIZE, "length": FRAMES, "resize": "crop"}}
    return graph


def test_empty_images_into_keyframes_continue_join_and_encode_are_refused(comfy, tiny_models):
    empty = tensor_value([1, 0, SIZE, 3])
    assert "'Allegro TI2V Keyframes' got an empty IMAGE as 'images'" in failure(comfy, keyframes_graph(empty), "keys")
    assert "'Allegro TI2V Continue Video' got an empty IMAGE as 'previous_frames'" in failure(
        comfy, continue_graph(tensor_value([8, SIZE, 0, 3])), "keys")
    join = {"a": tensor_value([4, 8, 8, 3]), "b": tensor_value([0, 8, 8, 3]),
            "join": {"class_type": "AllegroVideo_JoinClips", "inputs": {"previous": ["a", 0], "next": ["b", 0],
                                                                        "overlap_frames": 0, "mode": "blend"}},
            "show": show(["join", 0])}
    assert "'Allegro Join Clips' got an empty IMAGE as 'next'" in failure(comfy, join, "join")
    encode = {"vae": {"class_type": "AllegroVideo_VAELoader", "inputs": {"vae_name": T2V, "dtype": "fp32"}},
              "frames": tensor_value([4, 4, 4, 3]),
              "encode": {"class_type": "AllegroVideo_VAEEncode", "inputs": {"frames": ["frames", 0], "vae": ["vae", 0]}},
              "show": show(["encode", 0])}
    message = failure(comfy, encode, "encode")
    assert "frames of 4x4 pixels; the VAE needs at least 8x8" in message, message


def multi_gpu(devices) -> dict:
    graph = {"dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": T2V, "weight_dtype": "fp32"}},
             "multi": {"class_type": "AllegroVideo_MultiGPU", "inputs": {"model": ["dit", 0], "gpus": 2,
                                                                          "cfg_parallel": True, "devices": devices}},
             "show": show(["multi", 0])}
    return graph


@pytest.mark.parametrize("devices,expect", [
    ("garbage text", "'devices' names 'garbage text' is not a device name. Devices of this machine: cpu"),
    ("cuda:7", "'devices' names 'cuda:7' is not on this machine. Devices of this machine: cpu"),
    ("x" * 100_000, f"… (100000 characters in all) is not a device name"),
], ids=["garbage", "absent GPU", "100 kB"])
def test_device_names_that_are_not_devices_are_refused_naming_the_devices_there_are(comfy, tiny_models, devices,
                                                                                     expect):
    message = failure(comfy, multi_gpu(devices), "multi")
    assert expect in message and len(message) < 1000, message[:2000]


def test_a_million_entry_index_list_is_quoted_at_most_a_few_hundred_characters(comfy, tiny_models):
    indices = ", ".join(["0"] * 1_000_000)
    message = failure(comfy, keyframes_graph(tensor_value([2, SIZE, SIZE, 3]), indices), "keys")
    assert "images holds 2 image(s) but indices lists 1000000 frame(s)" in message, message[:2000]
    assert "characters in all" in message and len(message) < QUOTE_LIMIT + 600, len(message)


def test_a_huge_linked_number_and_text_are_quoted_short(comfy, tiny_models):
    graph = {"latent": {"class_type": "AllegroVideo_EmptyLatentVideo",
                        "inputs": {"width": ["w", 0], "height": SIZE, "length": FRAMES, "batch_size": 1}},
             "w": linked_value("9" * 50_000), "show": show(["latent", 0])}
    message = failure(comfy, graph, "latent")
    assert "width must be a whole number" in message and len(message) < QUOTE_LIMIT + 300, len(message)


def test_quote_keeps_short_values_whole_and_cuts_long_ones():
    assert quote("cuda:1") == "'cuda:1'" and quote(float("nan")) == "nan" and quote(42) == "42"
    long = quote("a" * 10_000)
    assert long.endswith("… (10000 characters in all)") and len(long) < QUOTE_LIMIT + 40
    assert quote(10 ** 10_000) == "an integer of about 10001 digits"
    assert quote([10 ** 10_000]) == "a list too large to show"
    assert len(quote(list(range(100_000)))) < QUOTE_LIMIT + 40
