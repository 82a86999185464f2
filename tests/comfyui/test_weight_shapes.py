"""Every tensor's shape checked against the decided config before a model is built (allegro/weight_shapes.py):
a single .safetensors or a .gguf whose tensors disagree with its config is refused naming the file, the
tensor, the shape found and the shape expected — never torch's raw "size mismatch for …"; through the
converter and through 'Load Allegro Model' / 'Load Allegro VAE' in ComfyUI's executor."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from allegro.checkpoint_kinds import CheckpointError, identify_checkpoint
from allegro.checkpoints import read_checkpoint
from allegro.config import decide_transformer_config, decide_vae_config
from allegro.gguf_file import read_gguf, write_gguf
from allegro.weight_shapes import check_transformer_shapes, check_vae_shapes, transformer_shapes
from scripts.convert_weights import convert, main

pytestmark = pytest.mark.slow          # writes the tiny model set

# Block 1's feed-forward: the config is read from block 0 and the patch embedding, so only the check sees it.
BAD_TENSOR, BAD_SHAPE, GOOD_SHAPE = "transformer_blocks.1.ff.net.0.proj.weight", (96, 48), (192, 48)
BAD_VAE_TENSOR = "decoder.up_blocks.1.resnets.0.conv1.weight"


def reshaped_copy(source, target, name, shape):
    """A copy of a safetensors file with tensor `name` replaced by one of `shape` (metadata kept)."""
    with safe_open(str(source), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(source))
    tensors[name] = torch.zeros(shape, dtype=tensors[name].dtype)
    save_file(tensors, str(target), metadata=metadata)
    return target


def decided(path):
    checkpoint = read_checkpoint(path, "transformer")
    kind = identify_checkpoint(checkpoint.weights).kind
    return decide_transformer_config(checkpoint.weights, kind, checkpoint.declared, path.name), checkpoint.weights


def test_the_tiny_models_pass_and_the_expected_shapes_are_the_models(tiny_models):
    config, weights = decided(tiny_models["t2v_file"])
    check_transformer_shapes(config, weights, "t2v")
    assert transformer_shapes(config)[BAD_TENSOR] == GOOD_SHAPE
    vae = read_checkpoint(tiny_models["vae_file"], "vae")
    check_vae_shapes(decide_vae_config(vae.weights, vae.declared, "vae"), vae.weights, "vae")


def test_a_safetensors_tensor_of_another_shape_is_named_with_both_shapes(tiny_models, tmp_path, capsys):
    path = reshaped_copy(tiny_models["t2v_file"], tmp_path / "bad.safetensors", BAD_TENSOR, BAD_SHAPE)
    config, weights = decided(path)
    with pytest.raises(CheckpointError) as error:
        check_transformer_shapes(config, weights, str(path))
    message = str(error.value)
    assert str(path) in message and f"'{BAD_TENSOR}' is [96, 48], expected [192, 48]" in message, message
    assert "2 blocks of width 48" in message and "size mismatch" not in message
    # The converter refuses it before quantising anything.
    assert main([str(path), str(tmp_path / "out.gguf"), "--quant", "Q8_0"]) == 1
    assert f"'{BAD_TENSOR}' is [96, 48], expected [192, 48]" in capsys.readouterr().err
    assert not (tmp_path / "out.gguf").exists()


def test_a_gguf_tensor_of_another_shape_is_refused_by_the_loader(tiny_models, tmp_path, comfy):
    good = convert(tiny_models["t2v_file"], tmp_path / "good.gguf", "Q8_0", log=lambda *_: None)
    weights, metadata = read_gguf(good)
    weights[BAD_TENSOR] = torch.zeros(BAD_SHAPE, dtype=torch.float16)
    folder = comfy.base_dir / "models" / "diffusion_models"
    bad = folder / "shape_check_bad.gguf"
    write_gguf(bad, weights, json.loads(metadata["config"]))
    try:
        result = comfy.run({"load": {"class_type": "AllegroVideo_ModelLoader",
                                     "inputs": {"model_name": bad.name, "weight_dtype": "fp32"}},
                            "show": {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}})
        assert result.status == "error"
        message = result.error["exception_message"]
        assert bad.name in message and f"'{BAD_TENSOR}' is [96, 48], expected [192, 48]" in message, message
        assert "size mismatch" not in message
    finally:
        bad.unlink()


def test_a_vae_tensor_of_another_shape_is_refused_by_the_loader(tiny_models, comfy):
    vae = read_checkpoint(tiny_models["vae_file"], "vae")
    found = tuple(vae.weights[BAD_VAE_TENSOR].shape)
    wrong = (found[0], found[1] // 2, *found[2:])
    bad = reshaped_copy(tiny_models["vae_file"], comfy.base_dir / "models" / "vae" / "shape_check_bad_vae.safetensors",
                        BAD_VAE_TENSOR, wrong)
    try:
        result = comfy.run({"load": {"class_type": "AllegroVideo_VAELoader",
                                     "inputs": {"vae_name": bad.name, "dtype": "fp32"}},
                            "show": {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}})
        message = result.error["exception_message"]
        assert f"'{BAD_VAE_TENSOR}' is {list(wrong)}, expected {list(found)}" in message, message
    finally:
        bad.unlink()


def test_missing_and_extra_tensors_are_named(tiny_models):
    config, weights = decided(tiny_models["t2v_file"])
    weights = dict(weights)
    del weights["transformer_blocks.1.attn2.to_v.weight"]
    weights["transformer_blocks.1.attn9.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) the model needs are missing \(e.g. "
                                              r"'transformer_blocks.1.attn2.to_v.weight'\); 1 tensor\(s\) have no "
                                              r"place in it \(e.g. 'transformer_blocks.1.attn9.weight'\)"):
        check_transformer_shapes(config, weights, "t2v")
