"""scripts/convert_weights.py: hub folders (T2V, and TI2V in the original repo's config format) and
single files in, GGUF / scaled-fp8 files out that carry their config; pickles and wrong targets are
refused with messages."""
import json
import pickle

import pytest
import torch

from allegro import config as allegro_config
from allegro.checkpoint_kinds import identify_checkpoint
from allegro.checkpoints import read_checkpoint
from allegro.quantization import FP8_SCALED, QuantizedWeight, storage_format
from scripts.convert_weights import convert, main

pytestmark = pytest.mark.slow          # writes the tiny model set


class WritesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_hub_pipeline_folder_to_scaled_fp8_keeps_its_config_and_latent_scale(tiny_models, tmp_path):
    target = convert(tiny_models["diffusers_t2v"], tmp_path, FP8_SCALED, log=lambda *_: None)
    assert target.name == "allegro-tiny_fp8_scaled.safetensors"
    checkpoint = read_checkpoint(target, "transformer")
    assert identify_checkpoint(checkpoint.weights).kind == "allegro_t2v"
    assert checkpoint.companions == {"vae": {"scaling_factor": 0.13}}
    original = read_checkpoint(tiny_models["diffusers_t2v"], "transformer")
    decided = allegro_config.decide_transformer_config(original.weights, "allegro_t2v", original.declared, "hub")
    assert allegro_config.decide_transformer_config(checkpoint.weights, "allegro_t2v", checkpoint.declared,
                                                    target.name) == decided
    for name, value in checkpoint.weights.items():
        quantised = storage_format(name, tuple(value.shape), FP8_SCALED) == FP8_SCALED
        assert isinstance(value, QuantizedWeight) == quantised, name
        if quantised:
            error = (value.dequantize() - original.weights[name]).norm() / original.weights[name].norm()
            assert error < 0.035
        else:
            assert torch.equal(value, original.weights[name]), name


def test_the_ti2v_transformer_folder_to_gguf_keeps_the_branches(tiny_models, tmp_path):
    target = convert(tiny_models["diffusers_ti2v"] / "transformer", tmp_path / "ti2v.gguf", "Q8_0",
                     log=lambda *_: None)
    checkpoint = read_checkpoint(target, "transformer")
    assert identify_checkpoint(checkpoint.weights).kind == "allegro_ti2v"
    assert checkpoint.declared["_class_name"] == allegro_config.TI2V_CLASS
    config = allegro_config.decide_transformer_config(checkpoint.weights, "allegro_ti2v", checkpoint.declared, "f")
    assert config.ti2v and config.rope_shares_equal_lengths
    for branch in ("pos_embed_mask", "pos_embed_masked_video", "pos_embed_first_frame"):
        assert f"{branch}.1.weight" in checkpoint.weights and f"{branch}.0.proj.weight" in checkpoint.weights
    # Rows Q8_0's 32-value blocks fit are quantised (the MLP output's 192), others (48) stay 16-bit.
    assert checkpoint.weights["transformer_blocks.0.ff.net.2.weight"].format == "Q8_0"
    assert checkpoint.weights["transformer_blocks.0.attn1.to_q.weight"].dtype == torch.float16


def test_pickles_and_bad_targets_are_refused(tiny_models, tmp_path, capsys):
    marker = tmp_path / "unpickled"
    bomb = tmp_path / "transformer.ckpt"
    bomb.write_bytes(pickle.dumps({"weight": WritesMarkerWhenUnpickled(marker)}, protocol=2))
    assert main([str(bomb), str(tmp_path), "--quant", "Q4_K"]) == 1
    assert "pickle" in capsys.readouterr().err and not marker.exists()
    assert main([str(tiny_models["t2v_file"]), str(tmp_path / "out.safetensors"), "--quant", "Q4_K"]) == 1
    assert ".gguf" in capsys.readouterr().err
    assert main([str(tiny_models["vae_file"]), str(tmp_path), "--quant", "Q8_0"]) == 1
    assert "not an Allegro transformer" in capsys.readouterr().err
    target = tmp_path / "t2v.gguf"
    assert main([str(tiny_models["t2v_file"]), str(target), "--quant", "Q8_0"]) == 0
    assert main([str(tiny_models["t2v_file"]), str(target), "--quant", "Q8_0"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(target), str(tmp_path / "again.gguf"), "--quant", "Q4_K"]) == 1
    assert "already quantised" in capsys.readouterr().err
    metadata = read_checkpoint(target, "transformer").metadata
    assert json.loads(metadata["config"])["transformer"]["num_attention_heads"] == 2
