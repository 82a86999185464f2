"""Allegro Text Encode on ComfyUI's own CLIP, as the stock 'Load CLIP' node makes it from a T5-XXL
single file (t5xxl_fp16.safetensors, type mochi or ltxv).

The stock loader recognises T5-XXL by one tensor's shape (`encoder.block.23…wi_1.weight`, 10240×4096 in
the real file; comfy/sd.py detect_te_model looks at its width 4096 in 0.3.75, at its height 10240 in 0.33),
takes the T5 dtype from `encoder.final_layer_norm.weight`, and then always builds the full 4.7 B-parameter
XXL from comfy/text_encoders/t5_config_xxl.json. So the file here is the tiny hub T5 plus that one marker
tensor, and the XXL config json is swapped for the tiny one's sizes; everything else — CLIPLoader,
detection, mochi_te / ltxv_te, T5XXLModel with its masks, ComfyUI's T5 tokenizer — is the stock code.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from numerics import assert_measured, assert_relative, norm_relative

pytestmark = pytest.mark.slow

T2V = "diffusers/Allegro-tiny"
FILE = "tiny_t5xxl_marked.safetensors"
XXL_MARKER = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"
PROMPT, NEGATIVE = "A lighthouse on a cliff at dusk, waves crash below.", "blurry, watermark"


def xxl_marker() -> torch.Tensor:
    """The smallest marker that this ComfyUI's own detect_te_model takes for T5-XXL (asked, not assumed
    from a version: the real 10240×4096 tensor, 160 MB, satisfies every version but is too big to write)."""
    from comfy.sd import TEModel, detect_te_model
    for shape in ((1, 4096), (10240, 1), (10240, 4096)):
        if detect_te_model({XXL_MARKER: torch.empty(shape)}) == TEModel.T5_XXL:
            return torch.zeros(shape)
    raise AssertionError("this ComfyUI takes no encoder.block.23 wi_1 tensor for T5-XXL: see comfy/sd.py detect_te_model")


@pytest.fixture(scope="module")
def tiny_xxl_file(base_dir, tiny_models, comfy):
    folder = tiny_models["diffusers_t2v"] / "text_encoder"
    weights = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        weights.update(load_file(shard))
    # fp16, as t5xxl_fp16.safetensors: ComfyUI 0.33 keeps the T5 in the dtype of the file's
    # encoder.final_layer_norm.weight, 0.3.75 in its text-encoder dtype, fp16 on CPU too.
    weights = {name: tensor.half() for name, tensor in weights.items()}
    assert "encoder.final_layer_norm.weight" in weights
    weights[XXL_MARKER] = xxl_marker().half()
    save_file(weights, base_dir / "models" / "text_encoders" / FILE)
    return json.loads((folder / "config.json").read_text())


@pytest.fixture
def tiny_xxl_config(comfy, tiny_xxl_file, monkeypatch):
    """ComfyUI's T5XXLModel builds from t5_config_xxl.json: give it the tiny T5's sizes instead."""
    import comfy.sd1_clip
    hf = tiny_xxl_file
    tiny = {"d_ff": hf["d_ff"], "d_kv": hf["d_kv"], "d_model": hf["d_model"], "num_heads": hf["num_heads"],
            "num_layers": hf["num_layers"], "vocab_size": hf["vocab_size"], "dense_act_fn": "gelu_pytorch_tanh",
            "is_gated_act": True, "model_type": "t5", "layer_norm_epsilon": hf["layer_norm_epsilon"]}
    original = comfy.sd1_clip.SDClipModel.__init__

    def init(self, *args, **kwargs):
        if str(kwargs.get("textmodel_json_config", "")).endswith("t5_config_xxl.json"):
            kwargs["textmodel_json_config"] = tiny
        original(self, *args, **kwargs)
    monkeypatch.setattr(comfy.sd1_clip.SDClipModel, "__init__", init)


def encode_graph(clip_node: dict) -> dict:
    return {"clip": clip_node,
            "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
                "clip": ["clip", 0], "prompt": PROMPT, "negative_prompt": NEGATIVE, "use_template": True,
                "clean_caption": True}}}


def cliploader(clip_type: str) -> dict:
    return {"class_type": "CLIPLoader", "inputs": {"clip_name": FILE, "type": clip_type, "device": "default"}}


def conditioning(comfy, graph) -> tuple:
    result = comfy.run(graph, targets=["text"])
    assert result.status == "success", result.error
    return result.output("text", 0), result.output("text", 1)


def folder_t5(dtype: str) -> dict:
    return {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": T2V, "dtype": dtype}}


@pytest.mark.parametrize("clip_type", ["mochi", "ltxv"])
def test_stock_cliploader_t5_equals_the_diffusers_folder_t5(comfy, tiny_xxl_config, clip_type):
    """The stock CLIPLoader's T5 (types ltxv and mochi) gives the folder T5's embeddings and mask; stored in fp16 it
    stays within fp16's rounding. Measured spread (avx2/avx512, 1 thread; ComfyUI 0.3.75, 0.33.0 and 0.8.0 alike):
    native vs folder loader 0 (bound 1e-6); fp16 vs fp32 5.96e-4 (norm-relative) in every setting, bound 2e-3 (3.4x:
    fp16's rounding, 2^-11 = 4.9e-4, sets it, not the kernels)."""
    native = conditioning(comfy, encode_graph(cliploader(clip_type)))
    # ComfyUI stores text encoders in fp16 ('default': its choice, also on CPU); so does the folder loader.
    same_dtype = conditioning(comfy, encode_graph(folder_t5("default")))
    fp32 = conditioning(comfy, encode_graph(folder_t5("fp32")))
    for (ours, ours_extra), (theirs, theirs_extra), (exact, _) in ((n[0], f[0], e[0]) for n, f, e in
                                                                  zip(native, same_dtype, fp32)):
        assert ours.shape == theirs.shape and ours.shape[1] == 512
        assert torch.equal(ours_extra["attention_mask"], theirs_extra["attention_mask"])
        assert_relative(ours.float(), theirs.float(), 1e-6, "native vs folder loader")
        # fp16 weight storage vs fp32: about fp16's rounding (2^-11 relative) through two T5 blocks.
        assert_measured(norm_relative(ours, exact), 2e-3, "fp16 vs fp32 (norm)")
    mask = native[0][0][1]["attention_mask"]
    assert 0 < int(mask.sum()) < 512                         # the prompt's tokens, then masked padding


def test_a_t5_type_without_masks_is_refused_with_what_to_pick(comfy, tiny_xxl_config):
    result = comfy.run(encode_graph(cliploader("sd3")), targets=["text"])
    assert result.status == "error"
    message = result.error["exception_message"]
    assert "without an attention mask" in message and "'mochi'" in message
