"""allegro.checkpoints: safe reading of safetensors files and hub folders, and clear refusals."""
import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from allegro.checkpoints import (
    CheckpointError, TensorInfo, find_component, read_diffusers_component, read_safetensors, read_safetensors_header,
)


class WritesMarkerWhenUnpickled:
    """Unpickling this creates a file: proof, if the file appears, that a loader unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def pickle_bomb(path, marker):
    path.write_bytes(pickle.dumps({"weight": WritesMarkerWhenUnpickled(marker)}, protocol=2))
    return path


def tensors(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=generator), "b.bias": torch.arange(5, dtype=torch.float16),
            "c": torch.randn(2, generator=generator).to(torch.bfloat16)}


def assert_error(call, *phrases):
    with pytest.raises(CheckpointError) as caught:
        call()
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in: {message}"
    return message


# --- single files --------------------------------------------------------------------------------

def test_read_safetensors_round_trip(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(tensors(), path, metadata={"config": '{"x": 1}'})
    state_dict, metadata = read_safetensors(path)
    assert metadata == {"config": '{"x": 1}'}
    for name, tensor in tensors().items():
        assert torch.equal(state_dict[name], tensor) and state_dict[name].dtype == tensor.dtype
    header, _ = read_safetensors_header(path)
    assert header["a.weight"] == TensorInfo("F32", (3, 4)) and header["c"] == TensorInfo("BF16", (2,))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_suffixes_are_refused_unopened(tmp_path, suffix):
    marker = tmp_path / "unpickled"
    path = pickle_bomb(tmp_path / f"model{suffix}", marker)
    assert_error(lambda: read_safetensors(path), str(path), "pickle", ".safetensors")
    assert not marker.exists()


def test_pickles_named_safetensors_are_recognised_by_their_bytes(tmp_path):
    marker = tmp_path / "unpickled"
    assert_error(lambda: read_safetensors(pickle_bomb(tmp_path / "renamed.safetensors", marker)), "pickle")
    zipped = tmp_path / "torch_save.safetensors"
    torch.save(tensors(), zipped)
    assert_error(lambda: read_safetensors(zipped), str(zipped), "zip", "convert")
    assert not marker.exists()


def test_missing_empty_folder_and_foreign_files(tmp_path):
    assert_error(lambda: read_safetensors(tmp_path / "nope.safetensors"), "nope.safetensors", "does not exist")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert_error(lambda: read_safetensors(tmp_path / "empty.safetensors"), "empty", "Download it again")
    assert_error(lambda: read_safetensors(tmp_path), "is a folder")
    cases = {
        "lfs.safetensors": (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 5\n", "Git LFS pointer"),
        "page.safetensors": (b"<!DOCTYPE html><html><body>Access denied</body></html>", "HTML"),
        "model.gguf": (b"GGUF\x03\x00\x00\x00" + bytes(32), "GGUF"),
        "notes.safetensors": (b"these are my notes about the model, not weights", "not a safetensors file"),
        "tiny.safetensors": (b"\x05\x00", "too short"),
    }
    for name, (content, phrase) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert_error(lambda: read_safetensors(tmp_path / name), name, phrase)


def test_header_problems(tmp_path):
    def write(name, header: bytes, data=b""):
        (tmp_path / name).write_bytes(struct.pack("<Q", len(header)) + header + data)
        return tmp_path / name

    garbage = write("garbage.safetensors", b"\x00\xffnot json at all")
    assert_error(lambda: read_safetensors(garbage), "not a safetensors file")
    assert_error(lambda: read_safetensors(write("broken.safetensors", b'{"w": {"dtype": "F32", \xff')), "not JSON")
    bad_entry = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}).encode()
    assert_error(lambda: read_safetensors(write("entry.safetensors", bad_entry, bytes(8))), "'w'", "damaged")
    bad_metadata = json.dumps({"__metadata__": {"a": 1}}).encode()
    assert_error(lambda: read_safetensors(write("meta.safetensors", bad_metadata)), "__metadata__")


def test_header_lengths_that_look_like_other_formats(tmp_path):
    """A 640-byte header starts the file with 0x80 0x02, a pickle's first bytes; it is still safetensors."""
    path = tmp_path / "w.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    header += b" " * (640 - len(header))
    path.write_bytes(struct.pack("<Q", len(header)) + header + torch.tensor([1.0, 2.0]).numpy().tobytes())
    assert path.read_bytes()[:2] == b"\x80\x02"
    state_dict, _ = read_safetensors(path)
    assert state_dict["w"].tolist() == [1.0, 2.0]


def test_truncated_files(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(tensors(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])                       # tensor data cut short
    assert_error(lambda: read_safetensors(path), "truncated", "interrupted")
    path.write_bytes(data[:40])                        # header cut short
    assert_error(lambda: read_safetensors(path), "truncated")


# --- component folders ---------------------------------------------------------------------------

def make_component(folder, config=None, weights_name="diffusion_pytorch_model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    config = config or {"_class_name": "AllegroTransformer3DModel", "num_layers": 2}
    (folder / "config.json").write_text(json.dumps(config))
    if weights_name:
        save_file(tensors(), folder / weights_name, metadata={"format": "pt"})
    return folder


def make_sharded(folder, stem="model"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["T5EncoderModel"]}))
    parts = [{"a.weight": tensors()["a.weight"]}, {"b.bias": tensors()["b.bias"], "c": tensors()["c"]}]
    weight_map = {}
    for i, part in enumerate(parts, start=1):
        name = f"{stem}-{i:05d}-of-{len(parts):05d}.safetensors"
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update({tensor: name for tensor in part})
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_single_file_component_skips_bin_duplicates(tmp_path):
    marker = tmp_path / "unpickled"
    folder = make_component(tmp_path / "transformer")
    pickle_bomb(folder / "diffusion_pytorch_model.bin", marker)
    config, state_dict, metadata = read_diffusers_component(folder)
    assert config["num_layers"] == 2 and metadata == {"format": "pt"}
    assert set(state_dict) == set(tensors()) and not marker.exists()


def test_sharded_component_skips_bin_shards(tmp_path):
    marker = tmp_path / "unpickled"
    folder = make_sharded(tmp_path / "text_encoder")
    for i in (1, 2):
        pickle_bomb(folder / f"pytorch_model-0000{i}-of-00002.bin", marker)
    bin_index = {"weight_map": {"a.weight": "pytorch_model-00001-of-00002.bin"}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(bin_index))
    config, state_dict, _ = read_diffusers_component(folder)
    assert config["architectures"] == ["T5EncoderModel"]
    assert all(torch.equal(state_dict[k], v) for k, v in tensors().items()) and not marker.exists()


def test_component_folder_problems(tmp_path):
    only_bin = make_component(tmp_path / "only_bin", weights_name=None)
    pickle_bomb(only_bin / "diffusion_pytorch_model.bin", tmp_path / "unpickled")
    assert_error(lambda: read_diffusers_component(only_bin), str(only_bin), "pickle", ".safetensors")
    assert not (tmp_path / "unpickled").exists()

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    save_file(tensors(), no_config / "model.safetensors")
    assert_error(lambda: read_diffusers_component(no_config), "no config.json", "model.safetensors")

    bad_json = make_component(tmp_path / "bad_json")
    (bad_json / "config.json").write_text("{'single': 'quotes'}")
    assert_error(lambda: read_diffusers_component(bad_json), str(bad_json / "config.json"), "not valid JSON")

    empty = make_component(tmp_path / "empty", weights_name=None)
    assert_error(lambda: read_diffusers_component(empty), "has no weights", "config.json")
    assert_error(lambda: read_diffusers_component(tmp_path / "absent"), "not a folder")

    two = make_component(tmp_path / "two", weights_name="a.safetensors")
    save_file(tensors(), two / "b.safetensors")
    assert_error(lambda: read_diffusers_component(two), "several sets of weights", "a.safetensors")


def test_sharded_folder_problems(tmp_path):
    missing_shard = make_sharded(tmp_path / "missing_shard")
    (missing_shard / "model-00002-of-00002.safetensors").unlink()
    assert_error(lambda: read_diffusers_component(missing_shard), "model-00002-of-00002.safetensors", "missing")

    no_index = make_sharded(tmp_path / "no_index")
    (no_index / "model.safetensors.index.json").unlink()
    assert_error(lambda: read_diffusers_component(no_index), "model.safetensors.index.json")

    stale = make_sharded(tmp_path / "stale")
    index = json.loads((stale / "model.safetensors.index.json").read_text())
    index["weight_map"]["extra.weight"] = "model-00001-of-00002.safetensors"
    (stale / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_error(lambda: read_diffusers_component(stale), "'extra.weight'", "another version")

    escape = make_sharded(tmp_path / "escape")
    (escape / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": "../x.safetensors"}}))
    assert_error(lambda: read_diffusers_component(escape), "same folder")

    broken = make_sharded(tmp_path / "broken")
    (broken / "model.safetensors.index.json").write_text('{"weight_map": ')
    assert_error(lambda: read_diffusers_component(broken), "model.safetensors.index.json", "not valid JSON")


def test_find_component(tmp_path):
    pipeline = tmp_path / "Allegro"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({
        "_class_name": "AllegroPipeline", "transformer": ["diffusers", "AllegroTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLAllegro"], "tokenizer": ["transformers", "T5Tokenizer"]}))
    transformer = make_component(pipeline / "transformer")
    vae = make_component(pipeline / "vae", {"_class_name": "AutoencoderKLAllegro"})
    (pipeline / "tokenizer").mkdir()
    (pipeline / "tokenizer" / "tokenizer.json").write_text("{}")

    assert find_component(pipeline, "transformer") == transformer
    assert find_component(pipeline, "tokenizer") == pipeline / "tokenizer"
    assert find_component(transformer, "transformer") == transformer          # the component folder itself
    assert find_component(vae, "vae") == vae
    assert_error(lambda: find_component(vae, "transformer"), "holds a vae", "AutoencoderKLAllegro")
    message = assert_error(lambda: find_component(pipeline, "text_encoder"), "text_encoder/", "missing")
    assert "transformer" in message and "vae" in message                       # what was found
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hi")
    assert_error(lambda: find_component(tmp_path / "random", "vae"), "model_index.json", "notes.txt")
    assert_error(lambda: find_component(tmp_path / "random" / "notes.txt", "vae"), "is a file")
    assert_error(lambda: find_component(tmp_path / "gone", "vae"), "does not exist")
    with pytest.raises(ValueError):
        find_component(pipeline, "unet")
