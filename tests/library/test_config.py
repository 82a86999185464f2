"""allegro.config: every model fact in one place, configs in either spelling, configs measured from
tensor shapes, and the config a model gets from its weights plus what came with them."""
import re
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch

from allegro.checkpoint_kinds import CheckpointError
from allegro.checkpoints import metadata_config
from allegro.config import (
    LATENT_SCALE, RELEASE_TRANSFORMER, RELEASE_VAE, TransformerConfig, VAEConfig, decide_latent_scale,
    decide_transformer_config, decide_vae_config, transformer_config_from_dict, vae_config_from_dict,
)
from meta_models import ORIGINAL_HUB_CONFIG, TINY_DIT, TINY_VAE, add_ti2v_branches, allegro_dit

REPO = Path(__file__).resolve().parents[2]


def pick(config, *keys):
    return tuple(getattr(config, key) for key in keys)


def decide(weights, declared=None, kind="allegro_t2v", source="dit.safetensors"):
    return decide_transformer_config(weights, kind, declared, source)


# --- one home per fact ---------------------------------------------------------------------------

def test_the_latent_scale_is_written_down_once():
    """A search for the scale literal in the package code finds its one definition."""
    hits = [(path.relative_to(REPO).as_posix(), n) for folder in ("allegro", "nodes") for path in (REPO / folder).glob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\b0\.13\b", line)]
    assert hits == [("allegro/config.py", next(n for n, line in enumerate((REPO / "allegro/config.py").read_text()
                                                                            .splitlines(), 1) if "0.13" in line))]
    assert LATENT_SCALE == VAEConfig().scaling_factor == 0.13


def test_every_config_field_has_a_one_line_doc():
    source = (REPO / "allegro/config.py").read_text().splitlines()
    for cls in (TransformerConfig, VAEConfig):
        body = source[source.index(f"class {cls.__name__}:"):]
        for field in fields(cls):
            line = next(line for line in body if line.strip().startswith(f"{field.name}:"))
            assert re.search(r"#\s*\S", line), f"{cls.__name__}.{field.name} has no comment saying what it is"


# --- reading either spelling -----------------------------------------------------------------------

def test_original_and_diffusers_formats_agree():
    assert transformer_config_from_dict(ORIGINAL_HUB_CONFIG) == RELEASE_TRANSFORMER     # the release = the defaults
    from diffusers import AllegroTransformer3DModel
    with torch.device("meta"):
        model = AllegroTransformer3DModel(**TINY_DIT)
    from_diffusers = transformer_config_from_dict(dict(model.config, _class_name="AllegroTransformer3DModel"))
    assert all(getattr(from_diffusers, k) == model.config[k] for k in asdict(from_diffusers) if k in model.config)
    ti2v = transformer_config_from_dict({**ORIGINAL_HUB_CONFIG, "_class_name": "AllegroTransformerTI2V3DModel",
                                         "sample_size": 64, "sample_size_t": 10})
    assert ti2v.ti2v and pick(ti2v, "sample_height", "sample_width", "sample_frames") == (64, 64, 10)


def test_unset_interpolation_scales_are_derived_like_each_class():
    unset = {"interpolation_scale_t": None, "interpolation_scale_h": None, "interpolation_scale_w": None}
    original = transformer_config_from_dict({**ORIGINAL_HUB_CONFIG, **unset})
    assert pick(original, *unset) == (22 / 16, 3.0, 4.0)
    assert transformer_config_from_dict({"sample_frames": 22, **unset}).interpolation_scale_t == 1.0   # 22 // 16
    assert transformer_config_from_dict({"sample_frames": 23, **unset}).interpolation_scale_t == 2.0
    assert transformer_config_from_dict({"out_channels": None, "in_channels": 8}).out_channels == 8
    # diffusers' class takes its defaults for absent keys (the original's derives them).
    assert pick(transformer_config_from_dict({"sample_frames": 6}), *unset) == (2.2, 2.0, 2.0)
    assert transformer_config_from_dict({"sample_size_t": 48, "norm_type": "ada_norm_single"}).interpolation_scale_t == 3


@pytest.mark.parametrize("change, phrase", [
    ({"norm_type": "ada_norm"}, "norm_type"), ({"use_rope": False}, "use_rope"),
    ({"activation_fn": "geglu"}, "activation_fn"), ({"use_additional_conditions": True}, "use_additional_conditions"),
    ({"_class_name": "AutoencoderKLAllegro"}, "AutoencoderKLAllegro"),
])
def test_settings_allegro_does_not_use_are_refused(change, phrase):
    with pytest.raises(CheckpointError, match=phrase):
        transformer_config_from_dict({**ORIGINAL_HUB_CONFIG, **change})


def test_vae_config_in_both_spellings():
    assert vae_config_from_dict({}) == RELEASE_VAE
    diffusers_style = vae_config_from_dict({"scaling_factor": 0.13, "block_out_channels": [8, 8, 16, 16],
                                            "temporal_downsample_blocks": [True, True, False, False]})
    original_style = vae_config_from_dict({"scale_factor": 0.13, "block_out_channels": [8, 8, 16, 16],
                                           "blocks_tempdown_li": [True, True, False, False], "chunk_len": 24,
                                           "t_over": 8, "tile_overlap": [120, 80], "sample_size": 320})
    assert diffusers_style == original_style
    assert original_style.tile_overlap == (8, 120, 80) and original_style.spatial_factor == 8


# --- measured from shapes, decided with the declared config -----------------------------------------

def test_config_from_shapes_alone():
    one_head = dict(num_attention_heads=1, attention_head_dim=96, cross_attention_dim=96)
    config = decide(allegro_dit(**one_head))
    shaped = {k: v for k, v in TINY_DIT.items() if not k.startswith("sample_")}    # sizes are not in the shapes
    assert config == TransformerConfig(**{**asdict(RELEASE_TRANSFORMER), **shaped, **one_head})
    wide_ti2v = add_ti2v_branches(allegro_dit(attention_head_dim=96, cross_attention_dim=192), width=192)
    wide = decide(wide_ti2v, kind="allegro_ti2v")
    assert pick(wide, "num_attention_heads", "attention_head_dim", "ti2v", "rope_shares_equal_lengths") == (2, 96, True,
                                                                                                             True)
    no_bias = decide(allegro_dit(attention_head_dim=96, cross_attention_dim=192, attention_bias=False,
                                 caption_channels=64, num_layers=3))
    assert pick(no_bias, "attention_bias", "caption_channels", "num_layers") == (False, 64, 3)


def test_declared_config_gives_heads_and_scales_flat_or_nested():
    declared = {**ORIGINAL_HUB_CONFIG, "num_attention_heads": 2, "attention_head_dim": 24, "num_layers": 2,
                "caption_channels": 32, "cross_attention_dim": 48, "interpolation_scale_t": 1.1,
                "sample_size": [20, 20], "sample_size_t": 6}
    config = decide(allegro_dit(), declared)
    assert pick(config, "num_attention_heads", "attention_head_dim", "interpolation_scale_t") == (2, 24, 1.1)
    assert pick(config, "sample_frames", "sample_height") == (6, 20)
    import json
    nested, companions = metadata_config({"config": json.dumps({"transformer": declared, "vae": {"scale_factor": 0.5}})},
                                         "transformer", "x")
    assert decide(allegro_dit(), nested) == config and decide_latent_scale(companions["vae"]) == 0.5
    assert metadata_config({"config": json.dumps(declared)}, "transformer", "x") == (declared, {})


def test_decided_config_errors():
    with pytest.raises(CheckpointError, match="head count cannot be read.*diffusers folder"):
        decide(allegro_dit())                                                   # width 48, no declared config
    wrong = {**ORIGINAL_HUB_CONFIG, "num_attention_heads": 2, "attention_head_dim": 24}
    with pytest.raises(CheckpointError, match="num_layers=32 but the tensors say 2"):
        decide(allegro_dit(), wrong)
    with pytest.raises(CheckpointError, match="not valid JSON"):
        metadata_config({"config": "{oops"}, "transformer", "x")
    with pytest.raises(CheckpointError, match="incomplete Allegro-TI2V.*pos_embed_first_frame"):
        decide(add_ti2v_branches(allegro_dit(), skip=("pos_embed_first_frame",)), kind="allegro_ti2v")
    gap = {k: v for k, v in allegro_dit(num_layers=3).items() if not k.startswith("transformer_blocks.1.")}
    with pytest.raises(CheckpointError, match="not numbered"):
        decide(gap, {**TINY_DIT, "num_layers": 3})
    with pytest.raises(CheckpointError, match="3 heads x 24.*48 wide"):
        decide(allegro_dit(), {**TINY_DIT, "num_attention_heads": 3})
    ti2v_config = {**TINY_DIT, "_class_name": "AllegroTransformerTI2V3DModel"}
    with pytest.raises(CheckpointError, match="describes an Allegro-TI2V transformer but the weights are Allegro T2V"):
        decide(allegro_dit(), ti2v_config)
    with pytest.raises(CheckpointError, match="describes an Allegro T2V transformer but the weights are Allegro-TI2V"):
        decide(add_ti2v_branches(allegro_dit()), {**TINY_DIT, "_class_name": "AllegroTransformer3DModel"},
               kind="allegro_ti2v")


def test_vae_config_from_shapes_and_declared():
    from diffusers import AutoencoderKLAllegro
    odd_flags = dict(TINY_VAE, temporal_downsample_blocks=(False, True, False, True),
                     temporal_upsample_blocks=(True, False, False, True))
    for kwargs in (TINY_VAE, odd_flags):
        with torch.device("meta"):
            model = AutoencoderKLAllegro(**kwargs)
        config = decide_vae_config(model.state_dict(), {"norm_num_groups": 4, "sample_size": 160, "scale_factor": 0.5},
                                   "vae.safetensors")
        for key in ("block_out_channels", "layers_per_block", "latent_channels", "temporal_downsample_blocks",
                    "temporal_upsample_blocks", "norm_num_groups", "sample_size", "in_channels", "out_channels"):
            assert getattr(config, key) == tuple(model.config[key]) if isinstance(model.config[key], (list, tuple)) \
                else getattr(config, key) == model.config[key], key
        assert config.scaling_factor == 0.5                               # the original's name for it
        # Without a config the release's settings are assumed; its 32 groups cannot split 8 channels.
        with pytest.raises(CheckpointError, match=r"no config came with it.*norm_num_groups=32 does not divide the "
                                                  r"channel counts \[8, 8, 16, 16\]"):
            decide_vae_config(model.state_dict(), None, "vae.safetensors")
    with torch.device("meta"):
        release = AutoencoderKLAllegro()
    bare = decide_vae_config(release.state_dict(), None, "vae.safetensors")
    assert pick(bare, "norm_num_groups", "sample_size", "scaling_factor") == (32, 320, 0.13)
    with pytest.raises(CheckpointError, match="latent_channels=16 but the tensors say 4"):
        decide_vae_config(model.state_dict(), {"latent_channels": 16}, "vae.safetensors")


def test_latent_scale_comes_from_the_downloads_vae_config():
    assert decide_latent_scale(None) == LATENT_SCALE
    assert decide_latent_scale({"scaling_factor": 0.5}) == 0.5 and decide_latent_scale({"scale_factor": 0.25}) == 0.25
    assert decide_latent_scale({"block_out_channels": [8, 8, 16, 16]}) == LATENT_SCALE
