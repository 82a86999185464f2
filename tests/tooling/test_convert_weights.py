"""scripts/convert_weights.py: hub folders (T2V, and TI2V in the original repo's config format) and
single files in, GGUF / scaled-fp8 files out that carry their config; pickles and wrong targets are
refused with messages; a failed write leaves nothing partial, and an old file stays until the new one is
complete."""
import contextlib
import errno
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


def failing_midway(real_writer, fraction=0.5):
    """A GGUF writer that writes part of the file and then fails as a full disk does (ENOSPC)."""
    def write(path, *args, **kwargs):
        real_writer(path, *args, **kwargs)
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_a_full_disk_leaves_no_partial_file_and_the_old_file_survives_overwrite(tiny_models, tmp_path, monkeypatch,
                                                                                 capsys):
    import allegro.gguf_file
    target = tmp_path / "t2v_Q8_0.gguf"
    assert main([str(tiny_models["t2v_file"]), str(target), "--quant", "Q8_0"]) == 0
    good = target.read_bytes()
    monkeypatch.setattr(allegro.gguf_file, "write_gguf", failing_midway(allegro.gguf_file.write_gguf))
    assert main([str(tiny_models["t2v_file"]), str(target), "--quant", "Q8_0", "--overwrite"]) == 1
    error = capsys.readouterr().err
    assert "the disk is full" in error and "the existing file is unchanged" in error and "GiB" in error, error
    assert "Traceback" not in error
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    # Without an earlier file: nothing at all is left.
    fresh = tmp_path / "fresh" / "t2v_Q8_0.gguf"
    assert main([str(tiny_models["t2v_file"]), str(fresh), "--quant", "Q8_0"]) == 1
    assert "no partial file was left" in capsys.readouterr().err
    assert list(fresh.parent.iterdir()) == []


def test_the_partial_file_is_written_beside_the_target_under_a_name_no_loader_lists(tiny_models, tmp_path,
                                                                                     monkeypatch):
    from scripts import convert_weights
    seen = []
    real = convert_weights.written_in_place

    @contextlib.contextmanager
    def recording(target):
        with real(target) as partial:
            seen.append(partial)
            yield partial
            assert partial.is_file() and partial.parent == target.parent and not target.exists()
    monkeypatch.setattr(convert_weights, "written_in_place", recording)
    target = convert(tiny_models["t2v_file"], tmp_path / "out.gguf", "Q8_0", log=lambda *_: None)
    assert target.is_file() and not seen[0].exists()
    assert seen[0].name.startswith(".out.gguf.") and seen[0].suffix == convert_weights.PARTIAL_SUFFIX
    # ComfyUI lists a folder's files by suffix: neither .gguf nor any weights suffix it knows.
    assert not seen[0].name.endswith((".gguf", ".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"))


def test_a_format_whose_blocks_fit_no_row_is_refused_and_a_partial_fit_is_named(tiny_models, tmp_path, capsys):
    # The tiny DiT's rows are 48 and 192 values: none is a whole Q4_K block (256).
    assert main([str(tiny_models["t2v_file"]), str(tmp_path / "q4.gguf"), "--quant", "Q4_K"]) == 1
    error = capsys.readouterr().err
    assert "Q4_K stores rows in blocks of 256 values" in error and "48, 192" in error, error
    assert "Nothing was written. Use fp8_scaled for this model, or Q8_0, which quantise only part of them" in error
    assert list(tmp_path.iterdir()) == []
    # Q8_0 (blocks of 32) fits the 192-value rows only: the others are named as kept.
    lines = []
    convert(tiny_models["t2v_file"], tmp_path / "q8.gguf", "Q8_0", log=lines.append)
    kept = next(line for line in lines if line.startswith("kept unquantised"))
    assert "whose rows (48 values) are not whole Q8_0 blocks of 32" in kept, kept
    assert "transformer_blocks.0.attn1.to_k.weight" in kept


def test_a_device_that_does_not_exist_is_named_with_the_devices_there_are(tiny_models, tmp_path, capsys):
    assert main([str(tiny_models["t2v_file"]), str(tmp_path), "--quant", "Q8_0", "--device", "garbage"]) == 1
    error = capsys.readouterr().err
    assert "--device 'garbage' is not a device name" in error and "Devices of this machine: cpu" in error, error
    assert list(tmp_path.iterdir()) == []
