"""The tiny checkpoints the tests write: real hub formats that diffusers/transformers load, that
our readers recognise, and that come out the same every time."""
import hashlib
import json

import pytest
import torch

from dataclasses import replace

from allegro.checkpoint_kinds import identify
from allegro.checkpoints import find_component, read_checkpoint, read_diffusers_component, read_safetensors
from allegro.config import decide_transformer_config, decide_vae_config, transformer_config_from_dict
from allegro_devtools.random_models import TI2V_BRANCHES, write_all


def content_digest(path) -> str:
    """A file's bytes; for safetensors its tensors and metadata (the writer orders metadata keys at random)."""
    if path.suffix != ".safetensors":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    tensors, metadata = read_safetensors(path)
    digest = hashlib.sha256(json.dumps(sorted(metadata.items())).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()    # 0-d too (LoRA alphas)
        digest.update(name.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode() + raw)
    return digest.hexdigest()


def file_digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): content_digest(p)
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def test_layout_matches_the_hub(tiny_models):
    for name in ("diffusers_t2v", "diffusers_ti2v"):
        root = tiny_models[name]
        index = json.loads((root / "model_index.json").read_text())
        assert index["scheduler"] == ["diffusers", "EulerAncestralDiscreteScheduler"]
        assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
        assert index["vae"] == ["diffusers", "AutoencoderKLAllegro"]
        text_encoder = root / "text_encoder"
        shards = sorted(text_encoder.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 2 and (text_encoder / "model.safetensors.index.json").is_file()
        assert len(list(text_encoder.glob("pytorch_model-*.bin"))) == len(shards)     # the decoys
        assert {p.name for p in (root / "tokenizer").iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
        scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        expected = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 2e-2, "beta_schedule": "linear",
                    "prediction_type": "epsilon", "timestep_spacing": "linspace"}
        assert {k: scheduler[k] for k in expected} == expected
    assert json.loads((tiny_models["diffusers_ti2v"] / "model_index.json").read_text())["transformer"][1] == \
        "AllegroTransformerTI2V3DModel"


def test_write_all_is_idempotent_and_deterministic(tiny_models, tmp_path):
    models_dir = tiny_models["vae_file"].parents[1]
    before = {p: p.stat().st_mtime_ns for p in models_dir.rglob("*") if p.is_file()}
    assert write_all(models_dir) == tiny_models
    assert before == {p: p.stat().st_mtime_ns for p in models_dir.rglob("*") if p.is_file()}   # nothing rewritten
    again = write_all(tmp_path / "models")
    fresh = file_digests(tmp_path / "models")
    # The session's models folder also holds files other tests add; compare what write_all writes.
    existing = file_digests(models_dir)
    assert fresh == {path: existing.get(path) for path in fresh}
    assert set(again) == set(tiny_models)


def test_diffusers_and_transformers_load_the_folders(tiny_models):
    from diffusers import AllegroPipeline, AllegroTransformer3DModel, AutoencoderKLAllegro
    from transformers import T5EncoderModel

    root = tiny_models["diffusers_t2v"]
    transformer = AllegroTransformer3DModel.from_pretrained(root / "transformer")
    single, _ = read_safetensors(tiny_models["t2v_file"])
    assert all(torch.equal(single[k], v) for k, v in transformer.state_dict().items())
    vae = AutoencoderKLAllegro.from_pretrained(root / "vae")
    assert vae.config.scaling_factor == 0.13 and vae.config.norm_num_groups == 4
    text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder")      # the .bin decoys would fail to unpickle
    _, ours, _ = read_diffusers_component(root / "text_encoder")
    assert all(torch.equal(ours[k], v) for k, v in text_encoder.state_dict().items() if k in ours)
    assert "shared.weight" in ours and identify(ours) == "t5_encoder"
    pipeline = AllegroPipeline.from_pretrained(root)
    assert pipeline.tokenizer("a cat").input_ids[-1] == pipeline.tokenizer.eos_token_id


def test_ti2v_folder_has_original_config_and_extra_branches(tiny_models):
    folder = find_component(tiny_models["diffusers_ti2v"], "transformer")
    config, weights, _ = read_diffusers_component(folder)
    assert config["_class_name"] == "AllegroTransformerTI2V3DModel" and config["sample_size"] == [20, 20]
    t2v_config, t2v_weights, _ = read_diffusers_component(tiny_models["diffusers_t2v"] / "transformer")
    assert transformer_config_from_dict(config) == replace(transformer_config_from_dict(t2v_config), ti2v=True)
    assert identify(weights) == "allegro_ti2v"
    extra = set(weights) - set(t2v_weights)
    assert extra == {f"{b}.{part}" for b in TI2V_BRANCHES for part in ("0.proj.weight", "0.proj.bias", "1.weight")}
    assert all(torch.equal(weights[k], v) for k, v in t2v_weights.items())
    for name in extra:                     # non-zero, so the image condition changes the output
        assert 0.15 < weights[name].std() < 0.35
    assert weights["pos_embed_mask.0.proj.weight"].shape == (48, 4, 2, 2)
    assert weights["pos_embed_mask.1.weight"].shape == (48, 48)


def test_single_files_are_recognised_and_their_configs_decided(tiny_models):
    def decided(name):
        checkpoint = read_checkpoint(tiny_models[name], "transformer")
        kind = identify(checkpoint.weights)
        return kind, decide_transformer_config(checkpoint.weights, kind, checkpoint.declared, name)
    kind, folder_config = decided("diffusers_t2v")
    assert kind == "allegro_t2v" and decided("t2v_file") == (kind, folder_config)
    ti2v = replace(folder_config, ti2v=True, rope_shares_equal_lengths=True)
    assert decided("ti2v_file") == ("allegro_ti2v", ti2v) == decided("diffusers_ti2v")
    assert read_checkpoint(tiny_models["t2v_w192_file"], "transformer").declared is None
    kind, wide = decided("t2v_w192_file")
    assert (kind, wide.num_attention_heads, wide.attention_head_dim, wide.cross_attention_dim) == ("allegro_t2v", 2, 96,
                                                                                                   192)
    for component, kind in (("transformer", "allegro_t2v"), ("vae", "allegro_vae")):
        assert identify(read_diffusers_component(tiny_models["diffusers_t2v"] / component)[1]) == kind
    file, folder = read_checkpoint(tiny_models["vae_file"], "vae"), read_checkpoint(tiny_models["diffusers_t2v"], "vae")
    assert identify(file.weights) == "allegro_vae"
    assert decide_vae_config(file.weights, file.declared, "file") == decide_vae_config(folder.weights, folder.declared,
                                                                                      "folder")
    # A pipeline folder's transformer comes with its VAE's config (the latent scale the DiT samples at).
    assert read_checkpoint(tiny_models["diffusers_t2v"], "transformer").companions["vae"]["scaling_factor"] == 0.13


@pytest.mark.parametrize("component", ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"])
def test_find_component_in_both_pipelines(tiny_models, component):
    for name in ("diffusers_t2v", "diffusers_ti2v"):
        assert find_component(tiny_models[name], component) == tiny_models[name] / component
