"""What a set of weights is, and the model config its tensor shapes imply.

`identify` recognises Allegro's DiT (T2V / TI2V), its VAE and T5 by tensor names, and names other
common model families so an error can say "this is an SDXL checkpoint" instead of listing missing
keys. It only looks at names and shapes, so it also works on `read_safetensors_header` output.

`infer_transformer_config` / `infer_vae_config` read a diffusers-style config from the shapes
(plus the JSON config a single file may carry in its safetensors metadata under "config");
`normalise_transformer_config` maps the original rhymes-ai config keys and diffusers' to one dict.
"""
import json
import re
from dataclasses import dataclass
from typing import Mapping


class CheckpointError(ValueError):
    """A weights file or folder that cannot be used; the message names it and says what to do.
    (Defined here, not in `checkpoints`, so that module can import this one without a cycle.)"""


ALLEGRO_T2V, ALLEGRO_TI2V, ALLEGRO_VAE = "allegro_t2v", "allegro_ti2v", "allegro_vae"
T5_ENCODER, UNKNOWN = "t5_encoder", "unknown"
KIND_DESCRIPTIONS = {
    ALLEGRO_T2V: "an Allegro text-to-video transformer",
    ALLEGRO_TI2V: "an Allegro-TI2V (text+image-to-video) transformer",
    ALLEGRO_VAE: "the Allegro video VAE",
    T5_ENCODER: "a T5 text encoder",
    "pixart": "a PixArt transformer (same layout as Allegro's, but it predicts variance channels too)",
    "sd1.5/sd2 unet or checkpoint": "a Stable Diffusion 1.5/2.x UNet or checkpoint",
    "sdxl": "a Stable Diffusion XL UNet or checkpoint",
    "sd3": "a Stable Diffusion 3 transformer",
    "flux": "a Flux transformer",
    "wan": "a Wan video transformer",
    "hunyuan video": "a HunyuanVideo transformer",
    "ltxv": "an LTX-Video transformer",
    "mochi": "a Mochi video transformer",
    "clip text encoder": "a CLIP text encoder",
    "image vae": "an image VAE (Stable Diffusion / SDXL / SD3 / Flux family)",
    UNKNOWN: "weights this package does not recognise",
}
# Prefixes under which whole-pipeline or ComfyUI-style files store a model's tensors.
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "vae.", "first_stage_model.",
                  "text_encoder.", "model.", "module.")
TI2V_BRANCHES = ("pos_embed_mask", "pos_embed_masked_video", "pos_embed_first_frame")
_ALLEGRO_DIT_KEYS = ("pos_embed.proj.weight", "adaln_single.linear.weight", "caption_projection.linear_1.weight",
                     "scale_shift_table", "transformer_blocks.0.attn2.to_k.weight", "proj_out.weight")


@dataclass(frozen=True)
class Identification:
    kind: str
    prefix: str = ""           # stripped from every tensor name to get the model's own names

    @property
    def description(self) -> str:
        text = KIND_DESCRIPTIONS.get(self.kind, self.kind)
        return f"{text} (tensor names prefixed with {self.prefix!r})" if self.prefix else text


# Other families: alternative sets of tensor names, any complete set identifies the family (original
# or ComfyUI naming, then diffusers'/transformers'). Checked in order; the first match wins, so a
# family whose names are a subset of another's comes after it (SD 1.5 after SDXL).
FAMILY_SIGNATURES = (
    ("clip text encoder", (("text_model.encoder.layers.0.self_attn.q_proj.weight",),
                           ("encoder.layers.0.self_attn.q_proj.weight", "embeddings.token_embedding.weight"),
                           ("transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight"))),
    ("sdxl", (("input_blocks.0.0.weight", "label_emb.0.0.weight"),
              ("add_embedding.linear_1.weight", "conv_in.weight"))),
    ("sd1.5/sd2 unet or checkpoint", (("input_blocks.0.0.weight",),
                                      ("time_embedding.linear_1.weight", "conv_in.weight"))),
    ("hunyuan video", (("txt_in.individual_token_refiner.blocks.0.norm1.weight",),
                       ("context_embedder.token_refiner.refiner_blocks.0.norm1.weight",))),
    ("flux", (("double_blocks.0.img_attn.qkv.weight",),
              ("x_embedder.weight", "single_transformer_blocks.0.attn.to_q.weight"))),
    ("pixart", (("t_block.1.weight", "x_embedder.proj.weight"),)),
    ("sd3", (("joint_blocks.0.context_block.attn.qkv.weight",),
             ("pos_embed.proj.weight", "context_embedder.weight",
              "time_text_embed.timestep_embedder.linear_1.weight"))),
    ("wan", (("patch_embedding.weight", "head.modulation"),
             ("patch_embedding.weight", "condition_embedder.time_embedder.linear_1.weight"))),
    ("mochi", (("t5_yproj.weight",), ("time_embed.pooler.to_kv.weight",))),
    ("ltxv", (("patchify_proj.weight", "adaln_single.emb.timestep_embedder.linear_1.weight"),
              ("proj_in.weight", "time_embed.emb.timestep_embedder.linear_1.weight",
               "caption_projection.linear_1.weight"))),
    ("image vae", (("encoder.down.0.block.0.conv1.weight",),
                   ("encoder.down_blocks.0.resnets.0.conv1.weight", "quant_conv.weight"))),
)
_ALLEGRO_VAE_NAMES = (re.compile(r"(encoder|decoder)\.temp_conv_in\.weight$"),
                      re.compile(r"(encoder\.down|decoder\.up)_blocks\.\d+\.temp_convs\."))
_T5_BLOCK_NAME = re.compile(r"encoder\.block\.0\.layer\.0\.SelfAttention\.")


def _classify(keys: set[str], shape) -> str:
    if all(name in keys for name in _ALLEGRO_DIT_KEYS):
        embed, out_rows = shape("pos_embed.proj.weight"), shape("proj_out.weight")[0]
        if len(embed) == 4 and out_rows == embed[1] * embed[2] * embed[3]:
            ti2v = any(k.startswith(TI2V_BRANCHES) for k in keys)
            return ALLEGRO_TI2V if ti2v else ALLEGRO_T2V
        return "pixart"      # same layout, but learned-sigma models predict twice the input channels
    if all(any(pattern.match(k) for k in keys) for pattern in _ALLEGRO_VAE_NAMES):
        return ALLEGRO_VAE
    if any(_T5_BLOCK_NAME.match(k) for k in keys) and ({"shared.weight", "encoder.embed_tokens.weight"} & keys):
        return T5_ENCODER
    for kind, alternatives in FAMILY_SIGNATURES:
        if any(all(name in keys for name in names) for names in alternatives):
            return kind
    return UNKNOWN


def identify_checkpoint(state_dict: Mapping) -> Identification:
    """The kind of model and the key prefix it is stored under. Values only need a `.shape`."""
    keys = list(state_dict)
    views = [("", set(keys))]
    prefixed = [(p, {k[len(p):] for k in keys if k.startswith(p)}) for p in KNOWN_PREFIXES]
    views += sorted((view for view in prefixed if view[1]), key=lambda view: -len(view[1]))
    for prefix, names in views:
        kind = _classify(names, lambda name, p=prefix: tuple(state_dict[p + name].shape))
        if kind != UNKNOWN:
            return Identification(kind, prefix)
    return Identification(UNKNOWN)


def identify(state_dict: Mapping) -> str:
    """One of the KIND_DESCRIPTIONS keys: "allegro_t2v", "allegro_ti2v", "allegro_vae", "t5_encoder",
    another family's name, or "unknown"."""
    return identify_checkpoint(state_dict).kind


def strip_prefix(state_dict: Mapping, prefix: str) -> dict:
    """The tensors under `prefix`, with it removed from their names (all of them if prefix is "")."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------
# Transformer config

# diffusers' AllegroTransformer3DModel defaults, which are the released model's values.
TRANSFORMER_DEFAULTS = {
    "patch_size": 2, "patch_size_t": 1, "num_attention_heads": 24, "attention_head_dim": 96,
    "in_channels": 4, "out_channels": 4, "num_layers": 32, "dropout": 0.0, "cross_attention_dim": 2304,
    "attention_bias": True, "sample_height": 90, "sample_width": 160, "sample_frames": 22,
    "activation_fn": "gelu-approximate", "norm_elementwise_affine": False, "norm_eps": 1e-6,
    "caption_channels": 4096, "interpolation_scale_h": 2.0, "interpolation_scale_w": 2.0, "interpolation_scale_t": 2.2,
}
TRANSFORMER_CLASSES = {"AllegroTransformer3DModel": False, "AllegroTransformerTI2V3DModel": True}   # → ti2v
# Other spellings of the same settings: the original repo's and an early diffusers port's.
_TRANSFORMER_ALIASES = {"sample_size_t": "sample_frames", "patch_size_temporal": "patch_size_t"}
# Settings of the original classes that select code paths this package does not implement.
_REQUIRED_SETTINGS = {"norm_type": "ada_norm_single", "use_rope": True, "use_rotary_positional_embeddings": True,
                      "activation_fn": "gelu-approximate", "downsampler": None}
ALLEGRO_HEAD_DIM = 96


def normalise_transformer_config(config: Mapping) -> dict:
    """One diffusers-style dict (TRANSFORMER_DEFAULTS' keys + "ti2v") from a config in the original
    repo's format (`sample_size: [h, w]`, `sample_size_t`, `norm_type`…) or diffusers'. Missing
    settings take the released model's values; unset interpolation scales are derived from the
    sample size the way the config's own class does it."""
    class_name = config.get("_class_name")
    if class_name is not None and class_name not in TRANSFORMER_CLASSES:
        raise CheckpointError(f"The config describes a {class_name}, not an Allegro transformer "
                              f"({' or '.join(TRANSFORMER_CLASSES)}). Pick the transformer's config.")
    for key, required in _REQUIRED_SETTINGS.items():
        if key in config and config[key] != required:
            raise CheckpointError(f"Unsupported transformer setting {key}={config[key]!r}: Allegro models use "
                                  f"{key}={required!r}, the only variant this package implements.")
    if config.get("use_additional_conditions"):
        raise CheckpointError("Unsupported transformer setting use_additional_conditions=true (PixArt's resolution "
                              "embedding); Allegro models do not use it.")
    original_style = any(key in config for key in ("sample_size", "sample_size_t", "norm_type"))
    result = dict(TRANSFORMER_DEFAULTS)
    for key, value in config.items():
        key = _TRANSFORMER_ALIASES.get(key, key)
        if key in TRANSFORMER_DEFAULTS and value is not None:
            result[key] = value
    size = config.get("sample_size")
    if isinstance(size, int):
        result["sample_height"] = result["sample_width"] = size
    elif size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise CheckpointError(f"The transformer config's sample_size should be [height, width], got {size!r}.")
        result["sample_height"], result["sample_width"] = size
    if config.get("out_channels") is None:
        result["out_channels"] = result["in_channels"]
    frames, height, width = result["sample_frames"], result["sample_height"], result["sample_width"]
    derived_t = (frames - 1) // 16 + 1 if frames % 2 else (frames / 16 if original_style else frames // 16)
    for key, derived in (("interpolation_scale_t", derived_t), ("interpolation_scale_h", height / 30),
                         ("interpolation_scale_w", width / 40)):
        result[key] = float(derived if config.get(key) is None else config[key])
    result["ti2v"] = TRANSFORMER_CLASSES.get(class_name, bool(config.get("ti2v", False)))
    return result


def _metadata_config(metadata: Mapping | None, section: str, source: str) -> dict | None:
    """The JSON config a single file carries in its metadata (flat, or nested under `section`)."""
    text = (metadata or {}).get("config")
    if text is None:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{source}: the 'config' metadata is not valid JSON ({error}).") from None
    if isinstance(config, dict) and isinstance(config.get(section), dict):
        config = config[section]
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: the 'config' metadata should be a JSON object.")
    return config


def _block_count(keys, prefix: str) -> int:
    indices = {int(m[1]) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"The blocks under {prefix!r} are not numbered 0..n-1 ({sorted(indices)}); "
                              "tensors are missing.")
    return len(indices)


def _check_declared(declared: Mapping, measured: Mapping, source: str) -> None:
    for key, value in measured.items():
        if key in declared and declared[key] != value:
            raise CheckpointError(f"{source}: its config says {key}={declared[key]!r} but the tensors say {value!r}. "
                                  "The config belongs to another model; fix or remove it.")


def infer_transformer_config(state_dict: Mapping, metadata: Mapping | None = None,
                             source: str = "This checkpoint") -> dict:
    """A normalised transformer config (see normalise_transformer_config) read from tensor shapes.

    The head count is not in the shapes: it comes from the metadata "config" JSON when present,
    otherwise Allegro's head size 96 is assumed when the width is a multiple of it."""
    found = identify_checkpoint(state_dict)
    if found.kind not in (ALLEGRO_T2V, ALLEGRO_TI2V):
        raise CheckpointError(f"{source} is {found.description}, not an Allegro transformer. "
                              "Pick an Allegro or Allegro-TI2V transformer file.")
    weights = strip_prefix(state_dict, found.prefix)
    shape = lambda name: tuple(weights[name].shape)  # noqa: E731
    width, in_channels, patch, _ = shape("pos_embed.proj.weight")
    measured = {
        "num_layers": _block_count(weights, "transformer_blocks."),
        "in_channels": in_channels,
        "out_channels": shape("proj_out.weight")[0] // (patch * patch),
        "patch_size": patch,
        "patch_size_t": 1,                       # Allegro's patch embedding is per frame (2-D)
        "caption_channels": shape("caption_projection.linear_1.weight")[1],
        "cross_attention_dim": shape("transformer_blocks.0.attn2.to_k.weight")[1],
        "attention_bias": "transformer_blocks.0.attn1.to_q.bias" in weights,
        "ti2v": found.kind == ALLEGRO_TI2V,
    }
    if measured["ti2v"]:
        for branch in TI2V_BRANCHES:
            expected = {f"{branch}.0.proj.weight": (width, in_channels, patch, patch),
                        f"{branch}.1.weight": (width, width)}
            for name, wanted in expected.items():
                if name not in weights or shape(name) != wanted:
                    problem = "missing" if name not in weights else f"shaped {shape(name)}, expected {wanted}"
                    raise CheckpointError(f"{source} is an incomplete Allegro-TI2V transformer: {name} is {problem}.")
    declared = _metadata_config(metadata, "transformer", source)
    if declared is not None:
        config = normalise_transformer_config(declared)
        config["ti2v"] = config["ti2v"] or measured["ti2v"]
        _check_declared({k: v for k, v in config.items() if k in declared or k == "ti2v"}, measured, source)
    elif width % ALLEGRO_HEAD_DIM == 0:
        config = dict(TRANSFORMER_DEFAULTS, num_attention_heads=width // ALLEGRO_HEAD_DIM,
                      attention_head_dim=ALLEGRO_HEAD_DIM)
    else:
        raise CheckpointError(
            f"{source}: the attention head count cannot be read from this file. Its width {width} is not a multiple "
            f"of Allegro's head size {ALLEGRO_HEAD_DIM} and it carries no 'config' metadata. Load the diffusers folder "
            "instead (its transformer/config.json has the head count), or save the file with its config JSON in the "
            "safetensors metadata under 'config'."
        )
    config.update(measured)
    if config["num_attention_heads"] * config["attention_head_dim"] != width:
        raise CheckpointError(f"{source}: its config gives {config['num_attention_heads']} heads x "
                              f"{config['attention_head_dim']}, but the tensors are {width} wide (heads x head size must "
                              "equal the width). The config belongs to another model; fix it.")
    return config


# ---------------------------------------------------------------------------------------------
# VAE config

VAE_DEFAULTS = {"norm_num_groups": 32, "sample_size": 320, "scaling_factor": 0.13, "act_fn": "silu",
                "force_upcast": True}
# The original AllegroAutoencoderKL3D's names for the same settings.
_VAE_ALIASES = {"scale_factor": "scaling_factor", "blocks_tempdown_li": "temporal_downsample_blocks",
                "blocks_tempup_li": "temporal_upsample_blocks"}


def infer_vae_config(state_dict: Mapping, metadata: Mapping | None = None, source: str = "This VAE file") -> dict:
    """A diffusers-style AutoencoderKLAllegro config from tensor shapes; group count, tile size
    and latent scale come from the metadata "config" JSON when present, else the real model's."""
    found = identify_checkpoint(state_dict)
    if found.kind != ALLEGRO_VAE:
        raise CheckpointError(f"{source} is {found.description}, not the Allegro VAE. Pick the Allegro VAE file.")
    weights = strip_prefix(state_dict, found.prefix)
    blocks = _block_count(weights, "encoder.down_blocks.")
    up_blocks = _block_count(weights, "decoder.up_blocks.")
    shape = lambda name: tuple(weights[name].shape)  # noqa: E731
    has_prefix = lambda prefix: any(k.startswith(prefix) for k in weights)  # noqa: E731
    measured = {
        "in_channels": shape("encoder.conv_in.weight")[1],
        "out_channels": shape("decoder.conv_out.weight")[0],
        "block_out_channels": tuple(shape(f"encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(blocks)),
        "layers_per_block": _block_count(weights, "encoder.down_blocks.0.resnets."),
        "latent_channels": shape("decoder.conv_in.weight")[1],
        # Which blocks halve / double the frame count: only those have these layers.
        "temporal_downsample_blocks": tuple(has_prefix(f"encoder.down_blocks.{i}.temp_convs_down.")
                                            for i in range(blocks)),
        "temporal_upsample_blocks": tuple(has_prefix(f"decoder.up_blocks.{i}.temp_conv_up.")
                                          for i in range(up_blocks)),
    }
    measured["down_block_types"] = ("AllegroDownBlock3D",) * blocks
    measured["up_block_types"] = ("AllegroUpBlock3D",) * up_blocks
    measured["temporal_compression_ratio"] = 2 ** sum(measured["temporal_downsample_blocks"])
    declared = {_VAE_ALIASES.get(k, k): v for k, v in (_metadata_config(metadata, "vae", source) or {}).items()}
    for key in ("block_out_channels", "temporal_downsample_blocks", "temporal_upsample_blocks"):
        if key in declared:
            declared[key] = tuple(declared[key])
    _check_declared(declared, {k: v for k, v in measured.items() if not k.endswith("block_types")}, source)
    config = {key: declared.get(key, default) for key, default in VAE_DEFAULTS.items()}
    config.update(measured)
    return config
