"""What Allegro is: the one home of every model fact this package uses.

- `TransformerConfig` / `VAEConfig`: the DiT and the VAE, defaults = the released models.
- The compression factors, patch size, latent channels and latent scale, read from those defaults.
- Reading a config in any spelling (the original rhymes-ai repo's or diffusers'),
  measuring a config from tensor shapes, and deciding a model's config from both.

Everything else in the package reads these names; no other module writes a model constant down.
"""
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

from .checkpoint_kinds import ALLEGRO_TI2V, TI2V_BRANCHES, CheckpointError
from .quoting import quote


@dataclass(frozen=True)
class TransformerConfig:
    num_layers: int = 32                  # transformer blocks
    num_attention_heads: int = 24         # heads per attention layer
    attention_head_dim: int = 96          # width of one head (divisible by 6: three RoPE axes)
    in_channels: int = 4                  # latent channels the DiT denoises (TI2V feeds 3x this)
    out_channels: int = 4                 # predicted noise channels
    patch_size: int = 2                   # tokens are patch_size x patch_size latent pixels
    patch_size_t: int = 1                 # and one latent frame
    caption_channels: int = 4096          # width of the text encoder's states (T5-XXL)
    cross_attention_dim: int = 2304       # width of the projected captions (= heads x head size)
    attention_bias: bool = True           # q/k/v projections have biases
    norm_eps: float = 1e-6                # LayerNorm epsilon in the blocks
    interpolation_scale_t: float = 2.2    # RoPE frame positions are divided by this
    interpolation_scale_h: float = 2.0    # RoPE row positions are divided by this
    interpolation_scale_w: float = 2.0    # RoPE column positions are divided by this
    sample_frames: int = 22               # latent frames of the training size (88 video frames)
    sample_height: int = 90               # latent rows of the training size (720 px)
    sample_width: int = 160               # latent columns of the training size (1280 px)
    ti2v: bool = False                    # Allegro-TI2V: image-conditioning branches present
    # The original repo (the only TI2V reference) caches RoPE tables by (size, length), so an axis
    # as long as an earlier one reuses that axis's table; decided by `decide_transformer_config`.
    rope_shares_equal_lengths: bool = False   # equal-length axes share one RoPE table (TI2V)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def input_channels(self) -> int:
        """Channels of the model input: the latent, plus masked-video latent and frame mask for TI2V."""
        return self.in_channels * (3 if self.ti2v else 1)

    def validate(self, source: str = "the transformer config") -> "TransformerConfig":
        """Every setting in its sane range (see `check_ranges`), or CheckpointError naming `source`."""
        check_ranges(self, source, RELEASE_TRANSFORMER)
        if self.patch_size_t != 1:
            raise CheckpointError(f"{source}: Allegro uses temporal patch 1; the config has "
                                  f"patch_size_t={self.patch_size_t}.")
        if self.attention_head_dim % 6:
            raise CheckpointError(f"{source}: attention_head_dim must be divisible by 6 (the 3-D RoPE splits each "
                                  f"head in three), got {self.attention_head_dim}. The release has 96.")
        return self


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3                  # RGB in
    out_channels: int = 3                 # RGB out
    latent_channels: int = 4              # channels of the latent video
    block_out_channels: tuple = (128, 256, 512, 512)    # each block but the last halves height and width
    layers_per_block: int = 2             # ResNet layers per encoder block (decoder: one more)
    norm_num_groups: int = 32             # GroupNorm groups
    temporal_downsample_blocks: tuple = (True, True, False, False)   # encoder blocks that halve the frames
    temporal_upsample_blocks: tuple = (False, True, True, False)     # decoder blocks that double them
    scaling_factor: float = 0.13          # latent scale: the DiT sees VAE latents times this
    sample_size: int = 320                # tile height and width in pixels (the reference tiling)
    tile_frames: int = 24                 # tile length in frames
    tile_overlap: tuple = (8, 120, 80)    # overlap of neighbouring tiles: frames, rows, columns

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self, source: str = "the VAE config") -> "VAEConfig":
        """Every setting in its sane range, GroupNorm groups dividing every channel count, or
        CheckpointError naming `source`."""
        check_ranges(self, source, RELEASE_VAE)
        blocks = len(self.block_out_channels)
        for name in ("temporal_downsample_blocks", "temporal_upsample_blocks"):
            if len(getattr(self, name)) != blocks:
                raise CheckpointError(f"{source}: {name} has {len(getattr(self, name))} entries but there are "
                                      f"{blocks} blocks (block_out_channels).")
        groups = self.norm_num_groups
        if any(channels % groups for channels in self.block_out_channels):
            raise CheckpointError(
                f"{source}: norm_num_groups={groups} does not divide the channel counts {list(self.block_out_channels)} "
                f"(GroupNorm splits every layer's channels into that many groups). The release has "
                f"{RELEASE_VAE.norm_num_groups}; fix the config, or use the config.json that came with these weights.")
        return self

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample_blocks)


# ---------------------------------------------------------------------------------------------
# Sane ranges: what a config.json may say before anything is built from it

MAX_SIZE = 1 << 16        # any count or width; far above every Allegro model (width 2304, 32 layers)
# setting: (kind, lowest allowed). "whole": an int; "positive": a finite number > lowest; "flag": a bool.
_RANGES = {
    "num_layers": ("whole", 1), "num_attention_heads": ("whole", 1), "attention_head_dim": ("whole", 1),
    "in_channels": ("whole", 1), "out_channels": ("whole", 1), "patch_size": ("whole", 1),
    "patch_size_t": ("whole", 1), "caption_channels": ("whole", 1), "cross_attention_dim": ("whole", 1),
    "sample_frames": ("whole", 1), "sample_height": ("whole", 1), "sample_width": ("whole", 1),
    "norm_eps": ("positive", 0), "interpolation_scale_t": ("positive", 0), "interpolation_scale_h": ("positive", 0),
    "interpolation_scale_w": ("positive", 0), "attention_bias": ("flag", 0), "ti2v": ("flag", 0),
    "rope_shares_equal_lengths": ("flag", 0),
    "latent_channels": ("whole", 1), "block_out_channels": ("wholes", 1), "layers_per_block": ("whole", 1),
    "norm_num_groups": ("whole", 1), "temporal_downsample_blocks": ("flags", 0),
    "temporal_upsample_blocks": ("flags", 0), "scaling_factor": ("positive", 0), "sample_size": ("whole", 8),
    "tile_frames": ("whole", 1), "tile_overlap": ("wholes", 0),
}


def _fits(kind: str, value, lowest) -> bool:
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and lowest <= v <= MAX_SIZE  # noqa: E731
    if kind == "whole":
        return whole(value)
    if kind == "wholes":
        return isinstance(value, tuple) and len(value) > 0 and all(whole(v) for v in value)
    if kind == "flag":
        return isinstance(value, bool)
    if kind == "flags":
        return isinstance(value, tuple) and all(isinstance(v, bool) for v in value)
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and lowest < value <= MAX_SIZE)


def check_ranges(config, source: str, release, keys=None) -> None:
    """CheckpointError for the first setting (of `keys`, default all) out of its range: counts and sizes
    are whole numbers from 1 (never floats, negatives or absurd sizes), scales and epsilons finite and
    above 0 (a RoPE scale of 0 would divide positions by zero and make every video NaN)."""
    for key in keys or [f.name for f in fields(config)]:
        kind, lowest = _RANGES[key]
        value = getattr(config, key)
        if not _fits(kind, value, lowest):
            allowed = {"whole": f"a whole number from {lowest} to {MAX_SIZE}",
                       "wholes": f"a list of whole numbers from {lowest} to {MAX_SIZE}",
                       "flag": "true or false", "flags": "a list of true/false",
                       "positive": f"a finite number above {lowest}"}[kind]
            raise CheckpointError(f"{source}: {key} must be {allowed}, got {quote(value)} (the release has "
                                  f"{getattr(release, key)!r}). Fix the config, or use the one that came with "
                                  "these weights.")


# The released models' facts, named for the modules that need them before any weights are loaded.
RELEASE_TRANSFORMER, RELEASE_VAE = TransformerConfig(), VAEConfig()
LATENT_CHANNELS = RELEASE_VAE.latent_channels
LATENT_SCALE = RELEASE_VAE.scaling_factor
SPATIAL_FACTOR = RELEASE_VAE.spatial_factor          # 8: pixels per latent pixel, per side
TEMPORAL_FACTOR = RELEASE_VAE.temporal_factor        # 4: video frames per latent frame
PATCH_SIZE = RELEASE_TRANSFORMER.patch_size          # 2: latent pixels per token, per side
HEAD_DIM = RELEASE_TRANSFORMER.attention_head_dim    # assumed when only tensor shapes are known
FRAME_RATE = 15.0                                    # the released videos: 88 frames at 15 fps
TEXT_TOKENS = 512                                    # T5 tokens the DiT was trained with (padding masked)


@dataclass(frozen=True)
class KnownVariant:
    """A published Allegro DiT: the video size it was trained at and the RoPE interpolation scales
    (t, h, w) its transformer/config.json gives (None where that file could not be read here)."""
    repo: str
    frames: int
    height: int
    width: int
    interpolation_scales: tuple | None
    ti2v: bool = False


# From the hub configs (sample_frames/height/width x 4/8/8) and model cards.
KNOWN_VARIANTS = (
    KnownVariant("rhymes-ai/Allegro", 88, 720, 1280, (2.2, 2.0, 2.0)),
    KnownVariant("rhymes-ai/Allegro-TI2V", 88, 720, 1280, None, ti2v=True),
    KnownVariant("rhymes-ai/Allegro-T2V-40x720P", 40, 720, 1280, (1.0, 2.0, 2.0)),
    KnownVariant("rhymes-ai/Allegro-T2V-40x360P", 40, 368, 640, (1.0, 1.0, 1.0)),
)

# Class names a hub component's config.json may carry (diffusers' and the original repo's).
COMPONENT_CLASSES = {
    "transformer": ("AllegroTransformer3DModel", "AllegroTransformerTI2V3DModel"),
    "vae": ("AutoencoderKLAllegro", "AllegroAutoencoderKL3D"),
    "text_encoder": ("T5EncoderModel",),
    "tokenizer": ("T5Tokenizer", "T5TokenizerFast"),
    "scheduler": ("EulerAncestralDiscreteScheduler",),
}
TI2V_CLASS = "AllegroTransformerTI2V3DModel"

# ---------------------------------------------------------------------------------------------
# Reading a config in either spelling

# The original repo's names (and an early diffusers port's) for the same settings.
_TRANSFORMER_ALIASES = {"sample_size_t": "sample_frames", "patch_size_temporal": "patch_size_t"}
_VAE_ALIASES = {"scale_factor": "scaling_factor", "blocks_tempdown_li": "temporal_downsample_blocks",
                "blocks_tempup_li": "temporal_upsample_blocks", "chunk_len": "tile_frames"}
# Settings of the original classes that select code paths this package does not implement.
_REQUIRED_SETTINGS = {"norm_type": "ada_norm_single", "use_rope": True, "use_rotary_positional_embeddings": True,
                      "activation_fn": "gelu-approximate", "downsampler": None}


def _known(cls, values: Mapping) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names and v is not None}


def transformer_config_from_dict(raw: Mapping, source: str = "The transformer config") -> TransformerConfig:
    """A TransformerConfig from a config.json in the original repo's format (`sample_size: [h, w]`,
    `sample_size_t`, `norm_type`…) or diffusers'. Missing settings take the released model's values;
    unset interpolation scales are derived from the sample size as the config's own class does.
    Ranges are checked by `TransformerConfig.validate` (those the derivation needs, here)."""
    class_name = raw.get("_class_name")
    if class_name is not None and class_name not in COMPONENT_CLASSES["transformer"]:
        raise CheckpointError(f"The config describes a {quote(class_name)}, not an Allegro transformer "
                              f"({' or '.join(COMPONENT_CLASSES['transformer'])}). Pick the transformer's config.")
    for key, required in _REQUIRED_SETTINGS.items():
        if key in raw and raw[key] != required:
            raise CheckpointError(f"Unsupported transformer setting {key}={quote(raw[key])}: Allegro models use "
                                  f"{key}={required!r}, the only variant this package implements.")
    if raw.get("use_additional_conditions"):
        raise CheckpointError("Unsupported transformer setting use_additional_conditions=true (PixArt's resolution "
                              "embedding); Allegro models do not use it.")
    original_style = any(key in raw for key in ("sample_size", "sample_size_t", "norm_type"))
    values = _known(TransformerConfig, {_TRANSFORMER_ALIASES.get(k, k): v for k, v in raw.items()})
    size = raw.get("sample_size")
    if isinstance(size, int):
        values["sample_height"] = values["sample_width"] = size
    elif size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise CheckpointError(f"The transformer config's sample_size should be [height, width], got {quote(size)}.")
        values["sample_height"], values["sample_width"] = size
    values.setdefault("out_channels", values.get("in_channels", RELEASE_TRANSFORMER.in_channels))
    config = replace(RELEASE_TRANSFORMER, **values)
    check_ranges(config, source, RELEASE_TRANSFORMER, ("sample_frames", "sample_height", "sample_width"))
    frames, height, width = config.sample_frames, config.sample_height, config.sample_width
    derived = {"interpolation_scale_t": (frames - 1) // 16 + 1 if frames % 2 else
               (frames / 16 if original_style else frames // 16),
               "interpolation_scale_h": height / 30, "interpolation_scale_w": width / 40}
    # Unset (null) scales are derived as both classes do; absent ones too in the original's format,
    # while diffusers' class takes its defaults (the release's) for absent keys.
    scales = {key: raw[key] if raw.get(key) is not None else
              float(value) if key in raw or original_style else getattr(RELEASE_TRANSFORMER, key)
              for key, value in derived.items()}
    config = replace(config, **scales)
    check_ranges(config, source, RELEASE_TRANSFORMER, tuple(scales))
    scales = {key: float(value) for key, value in scales.items()}
    ti2v = class_name == TI2V_CLASS if class_name is not None else bool(raw.get("ti2v", False))
    return replace(config, **scales, ti2v=ti2v)


def vae_config_from_dict(raw: Mapping, source: str = "The VAE config") -> VAEConfig:
    """A VAEConfig from diffusers' AutoencoderKLAllegro config or the original AllegroAutoencoderKL3D's
    (its `scale_factor`, `blocks_tempdown_li`, `t_over`/`tile_overlap` spellings). Ranges are
    checked by `VAEConfig.validate`."""
    values = {_VAE_ALIASES.get(k, k): v for k, v in raw.items()}
    try:
        if "t_over" in values or "tile_overlap" in values:
            spatial = values.get("tile_overlap", RELEASE_VAE.tile_overlap[1:])
            values["tile_overlap"] = (values.get("t_over", RELEASE_VAE.tile_overlap[0]), *list(spatial)[-2:])
        if isinstance(values.get("sample_size"), (list, tuple)):
            values["sample_size"] = values["sample_size"][0]
    except (TypeError, IndexError):
        raise CheckpointError(f"{source}: tile_overlap / t_over / sample_size are malformed ({quote(raw.get('tile_overlap'))}, "
                              f"{quote(raw.get('t_over'))}, {quote(raw.get('sample_size'))}); the release has tile_overlap "
                              "[120, 80], t_over 8 and sample_size 320.") from None
    return replace(RELEASE_VAE, **_known(VAEConfig, values))


def config_dict(config) -> dict:
    """A config as JSON-ready diffusers-style keys (for metadata and reports)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


# ---------------------------------------------------------------------------------------------
# Measuring a config from tensor shapes

def block_count(names, prefix: str) -> int:
    """How many numbered blocks `prefix<i>.` the tensor names hold (0..n-1, none missing)."""
    indices = {int(m[1]) for k in names if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"The blocks under {prefix!r} are not numbered 0..n-1 ({sorted(indices)}); "
                              "tensors are missing.")
    return len(indices)


def measure_transformer(weights: Mapping, kind: str, source: str) -> dict:
    """The settings the DiT's tensor shapes fix (all but the head count and the RoPE scales)."""
    shape = lambda name: tuple(weights[name].shape)  # noqa: E731
    width, in_channels, patch, _ = shape("pos_embed.proj.weight")
    measured = {
        "num_layers": block_count(weights, "transformer_blocks."),
        "in_channels": in_channels,
        "out_channels": shape("proj_out.weight")[0] // (patch * patch),
        "patch_size": patch,
        "patch_size_t": 1,                       # the patch embedding is per frame (2-D)
        "caption_channels": shape("caption_projection.linear_1.weight")[1],
        "cross_attention_dim": shape("transformer_blocks.0.attn2.to_k.weight")[1],
        "attention_bias": "transformer_blocks.0.attn1.to_q.bias" in weights,
        "ti2v": kind == ALLEGRO_TI2V,
    }
    if measured["ti2v"]:
        for branch in TI2V_BRANCHES:
            expected = {f"{branch}.0.proj.weight": (width, in_channels, patch, patch),
                        f"{branch}.1.weight": (width, width)}
            for name, wanted in expected.items():
                if name not in weights or shape(name) != wanted:
                    problem = "missing" if name not in weights else f"shaped {shape(name)}, expected {wanted}"
                    raise CheckpointError(f"{source} is an incomplete Allegro-TI2V transformer: {name} is {problem}.")
    return measured


def measure_vae(weights: Mapping) -> dict:
    """The settings the VAE's tensor shapes fix (all but group count, scale and tiling)."""
    shape = lambda name: tuple(weights[name].shape)  # noqa: E731
    has = lambda prefix: any(k.startswith(prefix) for k in weights)  # noqa: E731
    blocks, up_blocks = block_count(weights, "encoder.down_blocks."), block_count(weights, "decoder.up_blocks.")
    return {
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "block_out_channels": tuple(shape(f"encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(blocks)),
        "layers_per_block": block_count(weights, "encoder.down_blocks.0.resnets."),
        "latent_channels": shape("decoder.conv_in.weight")[1],
        # Only the blocks that halve / double the frame count have these layers.
        "temporal_downsample_blocks": tuple(has(f"encoder.down_blocks.{i}.temp_convs_down.") for i in range(blocks)),
        "temporal_upsample_blocks": tuple(has(f"decoder.up_blocks.{i}.temp_conv_up.") for i in range(up_blocks)),
    }


# ---------------------------------------------------------------------------------------------
# Deciding a model's config from its weights and the config that came with them

def _check_declared(declared: Mapping, measured: Mapping, source: str) -> None:
    for key, value in measured.items():
        if key in declared and declared[key] != value:
            raise CheckpointError(f"{source}: its config says {key}={quote(declared[key])} but the tensors say {value!r}. "
                                  "The config belongs to another model; fix or remove it.")


def decide_transformer_config(weights: Mapping, kind: str, declared: Mapping | None, source: str) -> TransformerConfig:
    """The DiT's config: the shapes decide every size; the declared config (config.json, or the
    file's metadata) must agree with them and supplies the head count and RoPE scales. Without a
    declared config the released head size is assumed when the width is a multiple of it."""
    measured = measure_transformer(weights, kind, source)
    width = weights["pos_embed.proj.weight"].shape[0]
    if declared is not None:
        config = transformer_config_from_dict(declared, source)
        if ("_class_name" in declared or "ti2v" in declared) and config.ti2v != measured["ti2v"]:
            said, found = ("Allegro-TI2V", "Allegro T2V") if config.ti2v else ("Allegro T2V", "Allegro-TI2V")
            raise CheckpointError(f"{source}: the config describes an {said} transformer but the weights are "
                                  f"{found}: the config and the weights come from two downloads. Download the "
                                  "model folder again, or pick the matching file.")
        stated = {_TRANSFORMER_ALIASES.get(k, k) for k in declared}
        _check_declared({k: v for k, v in asdict(config).items() if k in stated}, measured, source)
    elif width % HEAD_DIM == 0:
        config = replace(RELEASE_TRANSFORMER, num_attention_heads=width // HEAD_DIM, attention_head_dim=HEAD_DIM)
    else:
        raise CheckpointError(
            f"{source}: the attention head count cannot be read from this file. Its width {width} is not a multiple "
            f"of Allegro's head size {HEAD_DIM} and it carries no 'config' metadata. Load the diffusers folder "
            "instead (its transformer/config.json has the head count), or save the file with its config JSON in the "
            "safetensors metadata under 'config'."
        )
    config = replace(config, **measured, rope_shares_equal_lengths=measured["ti2v"]).validate(source)
    if config.inner_dim != width:
        raise CheckpointError(f"{source}: its config gives {config.num_attention_heads} heads x "
                              f"{config.attention_head_dim}, but the tensors are {width} wide (heads x head size must "
                              "equal the width). The config belongs to another model; fix it.")
    return config


def decide_vae_config(weights: Mapping, declared: Mapping | None, source: str) -> VAEConfig:
    """The VAE's config: shapes decide the architecture; the declared config must agree and
    supplies the group count, latent scale and tiling (else the released model's)."""
    measured = measure_vae(weights)
    if declared is None:
        return replace(RELEASE_VAE, **measured).validate(f"{source} (no config came with it, so the release's "
                                                         "settings are assumed)")
    config = vae_config_from_dict(declared, source)
    stated = {_VAE_ALIASES.get(k, k) for k in declared}
    _check_declared({k: v for k, v in asdict(config).items() if k in stated}, measured, source)
    return replace(config, **measured).validate(source)


def decide_latent_scale(vae_declared: Mapping | None) -> float:
    """The latent scale a DiT samples at: what the VAE config of its own download says (a hub
    folder's vae/config.json, or the "vae" section of a single file's metadata), else the release's."""
    if vae_declared is None:
        return RELEASE_VAE.scaling_factor
    config = vae_config_from_dict(vae_declared, "The VAE config of the model's download")
    check_ranges(config, "The VAE config of the model's download", RELEASE_VAE, ("scaling_factor",))
    return config.scaling_factor


# ---------------------------------------------------------------------------------------------
# What a decided config says about training

def trained_size(config: TransformerConfig) -> tuple[int, int, int]:
    """(frames, height, width) of the videos the DiT was trained at: its config's sample sizes
    (latent units) in frames and pixels."""
    return (config.sample_frames * TEMPORAL_FACTOR, config.sample_height * SPATIAL_FACTOR,
            config.sample_width * SPATIAL_FACTOR)


def known_variant(config: TransformerConfig) -> KnownVariant | None:
    """The published model whose trained size, kind and (where recorded) RoPE scales the config has."""
    scales = (config.interpolation_scale_t, config.interpolation_scale_h, config.interpolation_scale_w)
    for variant in KNOWN_VARIANTS:
        if ((variant.frames, variant.height, variant.width) == trained_size(config) and variant.ti2v == config.ti2v
                and variant.interpolation_scales in (None, scales)):
            return variant
    return None
