"""Tiny random-weight Allegro checkpoints in the real hub formats, written by the tests (never committed).

`write_all(models_dir)` lays out, under a ComfyUI models folder:
  diffusers/Allegro-tiny/       the hub layout of rhymes-ai/Allegro: model_index.json, transformer/,
                                vae/, text_encoder/ (sharded safetensors + decoy .bin shards, as the hub
                                ships duplicate .bin files that loaders must skip), tokenizer/, scheduler/
  diffusers/Allegro-TI2V-tiny/  the same, with a TI2V transformer whose config.json is in the original
                                rhymes-ai format (AllegroTransformerTI2V3DModel, sample_size [h, w] …)
  diffusion_models/             single files: T2V and TI2V with their config in the safetensors metadata,
                                and a width-192 T2V without any, for the head-size-96 inference path
  vae/                          the VAE as a single file, config in the metadata
Deterministic (fixed seeds) and idempotent: a stamp file records what was written.
"""
import json
import shutil
from pathlib import Path

import torch

# Bump when anything below changes, so an old test directory is rewritten.
LAYOUT_VERSION = 3
STAMP_NAME = ".allegro-tiny-models.json"

TRANSFORMER_KWARGS = dict(num_attention_heads=2, attention_head_dim=24, num_layers=2, cross_attention_dim=48,
                          caption_channels=32, sample_frames=6, sample_height=20, sample_width=20)
# 2 heads x 96: the width-192 file without a config, whose head count can only be inferred.
WIDE_TRANSFORMER_KWARGS = dict(TRANSFORMER_KWARGS, attention_head_dim=96, cross_attention_dim=192)
VAE_KWARGS = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                  sample_size=240)   # scaling_factor stays at the class default, 0.13 like the release
# 240-px tiles: diffusers' hard-coded 120/80-px overlaps only blend to 1 with tiles of 240 px or more.
T5_KWARGS = dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, relative_attention_num_buckets=32,
                 feed_forward_proj="gated-gelu", vocab_size=32128)
TI2V_BRANCHES = ("pos_embed_mask", "pos_embed_masked_video", "pos_embed_first_frame")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# model_index.json of the hub repos (rhymes-ai/Allegro; Allegro-TI2V names its own transformer class).
MODEL_INDEX = {
    "_class_name": "AllegroPipeline",
    "_diffusers_version": "0.32.0.dev0",
    "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "T5Tokenizer"],
    "transformer": ["diffusers", "AllegroTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLAllegro"],
}
TI2V_MODEL_INDEX = dict(MODEL_INDEX, _class_name="AllegroTI2VPipeline",
                        transformer=["diffusers", "AllegroTransformerTI2V3DModel"])

DECOY_BIN = b"DECOY: not a pickle. The hub ships .bin duplicates of the safetensors shards; loaders must skip them.\n"


def public_config(model) -> dict:
    """A diffusers model's config as config.json has it (class name, no private bookkeeping)."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}
    return {"_class_name": type(model).__name__, **config}


def original_ti2v_config(t2v_config: dict) -> dict:
    """The TI2V transformer config in the original repo's format (what its class's __init__ takes)."""
    c = t2v_config
    return {
        "_class_name": "AllegroTransformerTI2V3DModel", "_diffusers_version": "0.30.3",
        "activation_fn": c["activation_fn"], "attention_bias": c["attention_bias"],
        "attention_head_dim": c["attention_head_dim"], "ca_attention_mode": "xformers",
        "caption_channels": c["caption_channels"], "cross_attention_dim": c["cross_attention_dim"],
        "double_self_attention": False, "downsampler": None, "dropout": c["dropout"], "in_channels": c["in_channels"],
        "interpolation_scale_h": c["interpolation_scale_h"], "interpolation_scale_t": c["interpolation_scale_t"],
        "interpolation_scale_w": c["interpolation_scale_w"], "model_max_length": 300,
        "norm_elementwise_affine": c["norm_elementwise_affine"], "norm_eps": c["norm_eps"],
        "norm_type": "ada_norm_single",
        "num_attention_heads": c["num_attention_heads"], "num_embeds_ada_norm": 1000, "num_layers": c["num_layers"],
        "only_cross_attention": False, "out_channels": c["out_channels"], "patch_size": c["patch_size"],
        "patch_size_t": c["patch_size_t"], "sa_attention_mode": "flash",
        "sample_size": [c["sample_height"], c["sample_width"]], "sample_size_t": c["sample_frames"],
        "upcast_attention": False, "use_additional_conditions": None, "use_linear_projection": False, "use_rope": True,
    }


def ti2v_branch_weights(width: int, in_channels: int, patch: int, seed: int = 7) -> dict[str, torch.Tensor]:
    """The three TI2V conditioning branches: patch embed (conv) + linear, non-zero values of a
    usual initialisation's size (the release zero-initialises the linears for training; here the
    image must visibly steer a random model, so its effect is as strong as the noisy latent's)."""
    generator = torch.Generator().manual_seed(seed)
    normal = lambda *shape: torch.randn(*shape, generator=generator) * 0.25  # noqa: E731
    weights = {}
    for branch in TI2V_BRANCHES:
        weights[f"{branch}.0.proj.weight"] = normal(width, in_channels, patch, patch)
        weights[f"{branch}.0.proj.bias"] = normal(width)
        weights[f"{branch}.1.weight"] = normal(width, width)
    return weights


def _contiguous(state_dict) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state_dict.items()}


def _write_text_encoder(folder: Path) -> None:
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(2)
    T5EncoderModel(T5Config(**T5_KWARGS)).eval().save_pretrained(folder, max_shard_size="1MB")
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if len(shards) < 2:
        raise RuntimeError(f"expected the tiny T5 in several shards, got {[p.name for p in shards]}")
    weight_map = {}
    for shard in shards:
        decoy = shard.name.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        (folder / decoy).write_bytes(DECOY_BIN)
        weight_map[shard.name] = decoy
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {name: weight_map[shard] for name, shard in index["weight_map"].items()}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def _write_pipeline(root: Path, model_index: dict, transformer_writer, vae, shared_from: Path | None) -> None:
    from allegro_harness.runtime import comfyui_dir
    from diffusers import EulerAncestralDiscreteScheduler

    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
    transformer_writer(root / "transformer")
    if shared_from is not None:      # the TI2V repo ships the same VAE, T5 and tokenizer
        for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
            shutil.copytree(shared_from / name, root / name)
        return
    vae.save_pretrained(root / "vae", safe_serialization=True)
    _write_text_encoder(root / "text_encoder")
    (root / "tokenizer").mkdir()
    source = comfyui_dir() / "comfy" / "text_encoders" / "t5_tokenizer"
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, root / "tokenizer" / name)
    EulerAncestralDiscreteScheduler().save_config(root / "scheduler")


def _build_models():
    """(T2V transformer, width-192 transformer, VAE), each from its own seed."""
    from diffusers import AllegroTransformer3DModel, AutoencoderKLAllegro
    torch.manual_seed(0)
    t2v = AllegroTransformer3DModel(**TRANSFORMER_KWARGS).eval()
    torch.manual_seed(3)
    wide = AllegroTransformer3DModel(**WIDE_TRANSFORMER_KWARGS).eval()
    torch.manual_seed(1)
    vae = AutoencoderKLAllegro(**VAE_KWARGS).eval()
    return t2v, wide, vae


def write_all(models_dir: Path) -> dict[str, Path]:
    """Write every tiny checkpoint under `models_dir` (a ComfyUI models folder) and return their paths:
    diffusers_t2v, diffusers_ti2v (pipeline folders), t2v_file, ti2v_file, t2v_w192_file, vae_file."""
    from safetensors.torch import save_file

    models_dir = Path(models_dir)
    paths = {
        "diffusers_t2v": models_dir / "diffusers" / "Allegro-tiny",
        "diffusers_ti2v": models_dir / "diffusers" / "Allegro-TI2V-tiny",
        "t2v_file": models_dir / "diffusion_models" / "allegro_tiny_t2v.safetensors",
        "ti2v_file": models_dir / "diffusion_models" / "allegro_tiny_ti2v.safetensors",
        "t2v_w192_file": models_dir / "diffusion_models" / "allegro_tiny_t2v_noconfig_w192.safetensors",
        "vae_file": models_dir / "vae" / "allegro_tiny_vae.safetensors",
    }
    stamp = models_dir / STAMP_NAME
    expected_stamp = {"version": LAYOUT_VERSION, "paths": {k: str(v) for k, v in paths.items()}}
    if stamp.is_file() and json.loads(stamp.read_text()) == expected_stamp and all(p.exists() for p in paths.values()):
        return paths
    for path in paths.values():   # a half-written or outdated set: start over
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)

    t2v, wide, vae = _build_models()
    t2v_weights, t2v_config = _contiguous(t2v.state_dict()), public_config(t2v)
    width = t2v.config.num_attention_heads * t2v.config.attention_head_dim
    ti2v_weights = {**t2v_weights, **ti2v_branch_weights(width, t2v.config.in_channels, t2v.config.patch_size)}
    ti2v_config = original_ti2v_config(t2v_config)

    def write_t2v_transformer(folder: Path):
        t2v.save_pretrained(folder, safe_serialization=True)

    def write_ti2v_transformer(folder: Path):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(ti2v_config, indent=2))
        save_file(ti2v_weights, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})

    _write_pipeline(paths["diffusers_t2v"], MODEL_INDEX, write_t2v_transformer, vae, shared_from=None)
    _write_pipeline(paths["diffusers_ti2v"], TI2V_MODEL_INDEX, write_ti2v_transformer, vae,
                    shared_from=paths["diffusers_t2v"])

    save_file(t2v_weights, paths["t2v_file"], metadata={"format": "pt", "config": json.dumps(t2v_config)})
    save_file(ti2v_weights, paths["ti2v_file"], metadata={"format": "pt", "config": json.dumps(ti2v_config)})
    save_file(_contiguous(wide.state_dict()), paths["t2v_w192_file"])
    save_file(_contiguous(vae.state_dict()), paths["vae_file"],
              metadata={"format": "pt", "config": json.dumps(public_config(vae))})
    stamp.write_text(json.dumps(expected_stamp, indent=2))
    return paths
