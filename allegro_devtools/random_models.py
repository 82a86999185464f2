"""Random-weight Allegro checkpoints in the real hub formats, written by the tests, the benchmarks and the
demo (never committed). One writer, three size presets that keep the real architecture and shrink only
widths and depths, so the package's nodes and diffusers' AllegroPipeline load the very same files:

  tiny      the test suite's models (seconds to run anything)
  quantizable  the tests' quantisation models: width 768, the smallest whose rows K-quants can encode
  reduced   a few seconds per sampling step on 2 cores: the sampler and step-cache benchmarks
  medium    weights big enough for memory figures to mean something (T5 0.75 GB, DiT 1.1 GB, VAE 0.7 GB fp32)

`write_all(models_dir)` lays out the tests' tiny set under a ComfyUI models folder:
  diffusers/Allegro-tiny/       the hub layout of rhymes-ai/Allegro: model_index.json, transformer/,
                                vae/, text_encoder/ (sharded safetensors + decoy .bin shards, as the hub
                                ships duplicate .bin files that loaders must skip), tokenizer/, scheduler/
  diffusers/Allegro-TI2V-tiny/  the same, with a TI2V transformer whose config.json is in the original
                                rhymes-ai format (AllegroTransformerTI2V3DModel, sample_size [h, w] …)
  diffusion_models/             single files: T2V and TI2V with their config in the safetensors metadata,
                                and a width-192 T2V without any, for the head-size-96 inference path
  vae/                          the VAE as a single file, config in the metadata
`write_bench_pipeline(models_dir, size)` writes diffusers/Allegro-bench-<size>/ for the benchmarks.
Deterministic (fixed seeds) and idempotent: a stamp file records what was written.
"""
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .runtime import t5_tokenizer_dir


@dataclass(frozen=True)
class Size:
    """Widths and depths of the three models (head size 96 as released, except in `tiny`)."""
    transformer: dict
    t5: dict
    vae: dict


SIZES = {
    "tiny": Size(dict(num_attention_heads=2, attention_head_dim=24, num_layers=2),
                 dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2),
                 dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)),
    "reduced": Size(dict(num_attention_heads=4, attention_head_dim=96, num_layers=4),
                    dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2),
                    dict(block_out_channels=(8, 16, 32, 32), layers_per_block=2, norm_num_groups=4)),
    # Width 768 (8 heads x 96): the smallest Allegro width whose rows K-quants can encode (multiples of 256).
    "quantizable": Size(dict(num_attention_heads=8, attention_head_dim=96, num_layers=2),
                        dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2),
                        dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)),
    "medium": Size(dict(num_attention_heads=12, attention_head_dim=96, num_layers=12),
                   dict(d_model=1024, d_kv=64, num_heads=16, d_ff=2816, num_layers=12),
                   dict()),                                   # the released VAE's size (175M parameters)
}
T5_COMMON = dict(relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", vocab_size=32128)


@dataclass(frozen=True)
class Geometry:
    """What a config records besides widths and depths: sample sizes and tiles."""
    transformer: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)


# The tests' models: a small sample size, and 240-px VAE tiles because diffusers' hard-coded 120/80-px
# overlaps only blend to 1 with tiles of 240 px or more. scaling_factor stays at 0.13 like the release.
TEST_GEOMETRY = Geometry(dict(sample_frames=6, sample_height=20, sample_width=20),
                         dict(latent_channels=4, sample_size=240))
# The benchmarks' models: the release's sample size, tiles (320 px) and interpolation scales.
RELEASE_GEOMETRY = Geometry(dict(interpolation_scale_t=2.2, interpolation_scale_h=2.0, interpolation_scale_w=2.0))


def transformer_kwargs(size: str, geometry: Geometry = TEST_GEOMETRY, **changes) -> dict:
    """AllegroTransformer3DModel's arguments: cross-attention as wide as the DiT, captions as wide as T5."""
    arch = {**SIZES[size].transformer, **changes}
    width = arch["num_attention_heads"] * arch["attention_head_dim"]
    return dict(arch, cross_attention_dim=width, caption_channels=SIZES[size].t5["d_model"], **geometry.transformer)


def t5_kwargs(size: str) -> dict:
    return dict(SIZES[size].t5, **T5_COMMON)


def vae_kwargs(size: str, geometry: Geometry = TEST_GEOMETRY) -> dict:
    return dict(SIZES[size].vae, **geometry.vae)


# The tests' tiny models, as the tests and tools refer to them.
TRANSFORMER_KWARGS = transformer_kwargs("tiny")
# 2 heads x 96: the width-192 file without a config, whose head count can only be inferred.
WIDE_TRANSFORMER_KWARGS = transformer_kwargs("tiny", attention_head_dim=96)
VAE_KWARGS = vae_kwargs("tiny")
T5_KWARGS = t5_kwargs("tiny")


def _seeded(seed):
    if seed is not None:           # None: go on with the current random stream
        torch.manual_seed(seed)


def build_transformer(kwargs: dict, seed: int | None = None):
    from diffusers import AllegroTransformer3DModel
    _seeded(seed)
    return AllegroTransformer3DModel(**kwargs).eval()


def build_vae(kwargs: dict, seed: int | None = None):
    from diffusers import AutoencoderKLAllegro
    _seeded(seed)
    return AutoencoderKLAllegro(**kwargs).eval()


def build_text_encoder(kwargs: dict, seed: int | None = None):
    from transformers import T5Config, T5EncoderModel
    _seeded(seed)
    return T5EncoderModel(T5Config(**kwargs)).eval()


# --- hub layout ------------------------------------------------------------------------------

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


def save_text_encoder(model, folder: Path, sharded: bool) -> None:
    """T5 as transformers saves it; `sharded`: in 1 MB shards, each with a decoy .bin and its index, as on the hub."""
    if not sharded:
        model.save_pretrained(folder)
        return
    model.save_pretrained(folder, max_shard_size="1MB")
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    if len(shards) < 2:
        raise RuntimeError(f"expected the T5 in several shards, got {[p.name for p in shards]}")
    weight_map = {}
    for shard in shards:
        decoy = shard.name.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        (folder / decoy).write_bytes(DECOY_BIN)
        weight_map[shard.name] = decoy
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {name: weight_map[shard] for name, shard in index["weight_map"].items()}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def write_pipeline(root: Path, write_transformer, vae, text_encoder, model_index: dict = MODEL_INDEX,
                   sharded_text_encoder: bool = False) -> None:
    """A hub-layout pipeline folder: `write_transformer(folder)` writes transformer/; the VAE and T5 are models."""
    from diffusers import EulerAncestralDiscreteScheduler
    root.mkdir(parents=True, exist_ok=True)
    write_transformer(root / "transformer")
    vae.save_pretrained(root / "vae", safe_serialization=True)
    save_text_encoder(text_encoder, root / "text_encoder", sharded_text_encoder)
    (root / "tokenizer").mkdir()
    source = t5_tokenizer_dir()
    for name in TOKENIZER_FILES:
        shutil.copy2(source / name, root / "tokenizer" / name)
    EulerAncestralDiscreteScheduler().save_config(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))


def write_sibling_pipeline(root: Path, write_transformer, model_index: dict, shared_from: Path) -> None:
    """A pipeline with its own transformer and the VAE, T5, tokenizer and scheduler of `shared_from` (as the
    TI2V repo ships the T2V repo's)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
    write_transformer(root / "transformer")
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(shared_from / name, root / name)


def saver(model):
    """A `write_transformer` for a diffusers model: save_pretrained as safetensors."""
    return lambda folder: model.save_pretrained(folder, safe_serialization=True)


# --- the benchmarks' pipelines ----------------------------------------------------------------

BENCH_STAMP = "bench-stamp.json"


def bench_pipeline_name(size: str) -> str:
    return f"Allegro-bench-{size}"


def write_bench_pipeline(models_dir: Path, size: str) -> Path:
    """models_dir/diffusers/Allegro-bench-<size>/ in the release geometry, written once (one random stream
    from seed 0: transformer, VAE, then T5)."""
    folder = Path(models_dir) / "diffusers" / bench_pipeline_name(size)
    preset = SIZES[size]
    stamp = {"size": size, "kwargs": [preset.transformer, preset.t5, {k: list(v) if isinstance(v, tuple) else v
                                                                      for k, v in preset.vae.items()}]}
    if (folder / BENCH_STAMP).is_file() and json.loads((folder / BENCH_STAMP).read_text()) == stamp:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    transformer = build_transformer(transformer_kwargs(size, RELEASE_GEOMETRY), seed=0)
    vae = build_vae(vae_kwargs(size, RELEASE_GEOMETRY))
    text_encoder = build_text_encoder(t5_kwargs(size))
    write_pipeline(folder, saver(transformer), vae, text_encoder)
    (folder / BENCH_STAMP).write_text(json.dumps(stamp))
    return folder


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


# --- the tests' tiny set ----------------------------------------------------------------------

# Bump when anything the tests' set holds changes, so an old test directory is rewritten.
LAYOUT_VERSION = 3
STAMP_NAME = ".allegro-tiny-models.json"


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


def tiny_paths(models_dir: Path) -> dict[str, Path]:
    models_dir = Path(models_dir)
    return {
        "diffusers_t2v": models_dir / "diffusers" / "Allegro-tiny",
        "diffusers_ti2v": models_dir / "diffusers" / "Allegro-TI2V-tiny",
        "t2v_file": models_dir / "diffusion_models" / "allegro_tiny_t2v.safetensors",
        "ti2v_file": models_dir / "diffusion_models" / "allegro_tiny_ti2v.safetensors",
        "t2v_w192_file": models_dir / "diffusion_models" / "allegro_tiny_t2v_noconfig_w192.safetensors",
        "vae_file": models_dir / "vae" / "allegro_tiny_vae.safetensors",
    }


def write_all(models_dir: Path) -> dict[str, Path]:
    """Write every tiny checkpoint under `models_dir` (a ComfyUI models folder) and return their paths:
    diffusers_t2v, diffusers_ti2v (pipeline folders), t2v_file, ti2v_file, t2v_w192_file, vae_file."""
    from safetensors.torch import save_file

    models_dir = Path(models_dir)
    paths = tiny_paths(models_dir)
    stamp = models_dir / STAMP_NAME
    expected_stamp = {"version": LAYOUT_VERSION, "paths": {k: str(v) for k, v in paths.items()}}
    if stamp.is_file() and json.loads(stamp.read_text()) == expected_stamp and all(p.exists() for p in paths.values()):
        return paths
    for path in paths.values():   # a half-written or outdated set: start over
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)

    # Each model from its own seed.
    t2v = build_transformer(TRANSFORMER_KWARGS, seed=0)
    wide = build_transformer(WIDE_TRANSFORMER_KWARGS, seed=3)
    vae = build_vae(VAE_KWARGS, seed=1)
    text_encoder = build_text_encoder(T5_KWARGS, seed=2)
    t2v_weights, t2v_config = _contiguous(t2v.state_dict()), public_config(t2v)
    width = t2v.config.num_attention_heads * t2v.config.attention_head_dim
    ti2v_weights = {**t2v_weights, **ti2v_branch_weights(width, t2v.config.in_channels, t2v.config.patch_size)}
    ti2v_config = original_ti2v_config(t2v_config)

    def write_ti2v_transformer(folder: Path):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(ti2v_config, indent=2))
        save_file(ti2v_weights, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})

    write_pipeline(paths["diffusers_t2v"], saver(t2v), vae, text_encoder, sharded_text_encoder=True)
    write_sibling_pipeline(paths["diffusers_ti2v"], write_ti2v_transformer, TI2V_MODEL_INDEX,
                           shared_from=paths["diffusers_t2v"])

    save_file(t2v_weights, paths["t2v_file"], metadata={"format": "pt", "config": json.dumps(t2v_config)})
    save_file(ti2v_weights, paths["ti2v_file"], metadata={"format": "pt", "config": json.dumps(ti2v_config)})
    save_file(_contiguous(wide.state_dict()), paths["t2v_w192_file"])
    save_file(_contiguous(vae.state_dict()), paths["vae_file"],
              metadata={"format": "pt", "config": json.dumps(public_config(vae))})
    stamp.write_text(json.dumps(expected_stamp, indent=2))
    return paths


# --- a 40-frame low-resolution research model, tiny ---------------------------------------------

def low_res_geometry(repo: str = "rhymes-ai/Allegro-T2V-40x360P") -> Geometry:
    """A published variant's geometry (allegro.config.KNOWN_VARIANTS): its sample size and RoPE scales,
    and the release's 320-px VAE tiles."""
    from allegro.config import KNOWN_VARIANTS, SPATIAL_FACTOR, TEMPORAL_FACTOR
    variant = next(v for v in KNOWN_VARIANTS if v.repo == repo)
    t, h, w = variant.interpolation_scales
    return Geometry(dict(sample_frames=variant.frames // TEMPORAL_FACTOR,
                         sample_height=variant.height // SPATIAL_FACTOR, sample_width=variant.width // SPATIAL_FACTOR,
                         interpolation_scale_t=t, interpolation_scale_h=h, interpolation_scale_w=w),
                    dict(latent_channels=4, sample_size=320))


def write_low_res_pipeline(models_dir: Path, repo: str = "rhymes-ai/Allegro-T2V-40x360P") -> Path:
    """models_dir/diffusers/<name>-tiny/: the tiny T2V weights (same seeds as write_all's) with the config
    of a low-resolution variant and a VAE config with the release's 320-px tiles; T5, tokenizer and
    scheduler copied from the tiny set (written first). Written once."""
    paths = write_all(models_dir)
    folder = Path(models_dir) / "diffusers" / (repo.split("/")[-1] + "-tiny")
    if (folder / "model_index.json").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    geometry = low_res_geometry(repo)
    transformer = build_transformer(transformer_kwargs("tiny", geometry), seed=0)
    vae = build_vae(vae_kwargs("tiny", geometry), seed=1)
    folder.mkdir(parents=True)
    saver(transformer)(folder / "transformer")
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    for name in ("text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(paths["diffusers_t2v"] / name, folder / name)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return folder


# --- the quantisation tests' transformers ---------------------------------------------------

def quantizable_paths(models_dir: Path) -> dict[str, Path]:
    folder = Path(models_dir) / "diffusion_models"
    return {"t2v": folder / "allegro_q_t2v.safetensors", "ti2v": folder / "allegro_q_ti2v.safetensors"}


def write_quantizable(models_dir: Path) -> dict[str, Path]:
    """Width-768 T2V and TI2V transformers (fp32, config in the metadata, the tiny T5's caption width)
    under models_dir/diffusion_models/, for converting to GGUF / scaled fp8. Written once."""
    from safetensors.torch import save_file
    paths = quantizable_paths(models_dir)
    if all(p.is_file() for p in paths.values()):
        return paths
    paths["t2v"].parent.mkdir(parents=True, exist_ok=True)
    model = build_transformer(transformer_kwargs("quantizable"), seed=11)     # captions as wide as the tiny T5
    weights, config = _contiguous(model.state_dict()), public_config(model)
    width = model.config.num_attention_heads * model.config.attention_head_dim
    ti2v_weights = {**weights, **ti2v_branch_weights(width, model.config.in_channels, model.config.patch_size, seed=12)}
    # The branches' linears at a trained model's scale (the tiny set's are exaggerated to steer a random model).
    for branch in TI2V_BRANCHES:
        ti2v_weights[f"{branch}.1.weight"] = ti2v_weights[f"{branch}.1.weight"] / 8
    save_file(weights, paths["t2v"], metadata={"format": "pt", "config": json.dumps(config)})
    save_file(ti2v_weights, paths["ti2v"], metadata={"format": "pt", "config": json.dumps(original_ti2v_config(config))})
    return paths
