"""Loading the Allegro parts as ComfyUI objects: the DiT (T2V or TI2V) as a MODEL, the VAE, T5 as a CLIP.

Each loads in four steps: resolve the choice to a path (sources), read tensors + declared config, identify
the weights, decide the config (allegro.config), build the ComfyUI object (model, vae, t5_clip). The loader
nodes (nodes/loaders.py) and the factories ComfyUI calls to rebuild a model read this module."""
import logging

import torch

from ..allegro import config as allegro_config
from ..allegro.checkpoint_kinds import KIND_DESCRIPTIONS, identify_checkpoint, strip_prefix
from ..allegro.checkpoints import Checkpoint
from ..allegro.quantization import QuantizedWeight, formats_in
from ..allegro.weight_shapes import check_transformer_shapes, check_vae_shapes
from . import model_size, sources

WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn}
FP8_MATMUL = "fp8_e4m3fn_fast"
VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def identify(checkpoint: Checkpoint, wanted: tuple[str, ...], node: str) -> tuple[str, dict]:
    """(kind, tensors with any whole-pipeline prefix removed); a clear error for other weights."""
    found = identify_checkpoint(checkpoint.weights)
    if found.kind not in wanted:
        expected = " or ".join(KIND_DESCRIPTIONS[w] for w in wanted)
        raise ValueError(f"{checkpoint.source.name} is {found.description}, not {expected}. "
                         f"Pick the right file in '{node}'.")
    return found.kind, strip_prefix(checkpoint.weights, found.prefix)


def config_source(checkpoint: Checkpoint) -> str:
    """Where the checkpoint's config was declared, as the config errors name it."""
    return str(checkpoint.source / "config.json") if checkpoint.source.is_dir() else checkpoint.source.name


def load_model(model_name: str, weight_dtype: str, disable_dynamic: bool = False):
    """The DiT as a ComfyUI ModelPatcher. Also the model's `cached_patcher_init` factory: newer ComfyUI
    calls it as load_model(*args, disable_dynamic=True) to rebuild the model from its files
    (clone(force_deepcopy=True), non-dynamic delegates) and as load_model(*args) for multi-GPU copies."""
    from .model import build_model
    checkpoint = sources.read(model_name, "diffusion_models", "transformer")
    kind, weights = identify(checkpoint, ("allegro_t2v", "allegro_ti2v"), "Load Allegro Model")
    source = config_source(checkpoint)
    config = allegro_config.decide_transformer_config(weights, kind, checkpoint.declared, source)
    check_transformer_shapes(config, weights, str(checkpoint.source))
    latent_scale = allegro_config.decide_latent_scale(checkpoint.companions.get("vae"))
    stored_as = ", ".join(f"{count} {name}" for name, count in sorted(formats_in(weights).items()))
    logging.info("Loading %s from %s (tensors: %s)", KIND_DESCRIPTIONS[kind], checkpoint.source, stored_as)
    model_size.report_loaded(config)
    is_quantized = any(isinstance(value, QuantizedWeight) for value in weights.values())
    patcher = build_model(config, weights, storage_dtype(weight_dtype, is_quantized), latent_scale,
                          fp8_matmul=weight_dtype == FP8_MATMUL, disable_dynamic=disable_dynamic)
    patcher.cached_patcher_init = (load_model, (model_name, weight_dtype))    # unread by 0.3.75 and 0.8.0
    patcher.model.allegro_source = model_name          # named in the sampler's messages
    return patcher


def load_vae(vae_name: str, dtype: str, disable_dynamic: bool = False):
    """The VAE as a ComfyUI VAE; its patcher's `cached_patcher_init` is load_vae_patcher."""
    from .vae import build_vae
    checkpoint = sources.read(vae_name, "vae", "vae")
    _, weights = identify(checkpoint, ("allegro_vae",), "Load Allegro VAE")
    source = config_source(checkpoint)
    config = allegro_config.decide_vae_config(weights, checkpoint.declared, source)
    check_vae_shapes(config, weights, str(checkpoint.source))
    vae = build_vae(config, weights, VAE_DTYPES[dtype], disable_dynamic=disable_dynamic)
    vae.patcher.cached_patcher_init = (load_vae_patcher, (vae_name, dtype))
    return vae


def load_vae_patcher(vae_name: str, dtype: str, disable_dynamic: bool = False):
    """The VAE's ModelPatcher, rebuilt from its files (the factory core calls, as for load_model)."""
    return load_vae(vae_name, dtype, disable_dynamic).patcher


def model_choices() -> list[str]:
    return sources.diffusers_choices("transformer") + sources.file_choices("diffusion_models", gguf=True)


def storage_dtype(weight_dtype: str, quantized: bool) -> torch.dtype:
    """The dtype of the tensors a quantised file keeps unquantised: the choice, but never fp8 (they
    are the ones that quantise badly; the quantised ones keep the file's format)."""
    dtype = WEIGHT_DTYPES[weight_dtype]
    if quantized and dtype == torch.float8_e4m3fn:
        logging.info("Quantised weights keep their format; the unquantised tensors are stored in bf16")
        return torch.bfloat16
    return dtype


def vae_choices() -> list[str]:
    return sources.diffusers_choices("vae") + sources.file_choices("vae")


def load_t5(text_encoder: str, dtype: str):
    """T5 v1.1 XXL from a hub folder's text_encoder/ as a native CLIP."""
    from .t5_clip import build_t5_clip
    checkpoint = sources.read(text_encoder, "text_encoders", "text_encoder")
    _, weights = identify(checkpoint, ("t5_encoder",), "Load Allegro T5 (diffusers)")
    clip = build_t5_clip(checkpoint.declared, weights, TEXT_DTYPES[dtype], str(checkpoint.source))
    clip.allegro_source = text_encoder                 # named in the sampler's messages
    return clip
