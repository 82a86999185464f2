"""Loader nodes: the Allegro DiT (T2V or TI2V), its VAE, and T5 from a diffusers folder.

Each loads in four steps: resolve the choice to a path, read tensors + declared config, identify
the weights, decide the config (allegro.config), build the ComfyUI object."""
import logging

import torch
from comfy_api.v0_0_2 import io

from ..allegro import config as allegro_config
from ..allegro.checkpoint_kinds import KIND_DESCRIPTIONS, identify_checkpoint, strip_prefix
from ..allegro.checkpoints import Checkpoint
from ..allegro.quantization import QuantizedWeight, formats_in
from ..allegro.weight_shapes import check_transformer_shapes, check_vae_shapes
from . import checks, model_size, sources

CATEGORY = "Allegro/loaders"

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
    from .comfy_model import build_model
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
    from .comfy_vae import build_vae
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


class AllegroModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_ModelLoader",
            display_name="Load Allegro Model",
            category=CATEGORY,
            description="Loads the Allegro DiT (text-to-video) or Allegro-TI2V (text-image-to-video), told apart by "
                        "its weights: a single .safetensors or .gguf from models/diffusion_models/ (or models/unet/), or "
                        "the hub folder (model_index.json, transformer/ …) under models/diffusers/. GGUF (Q8_0, Q6_K, "
                        "Q5_K, Q4_K) and scaled-fp8 files stay quantised in memory and are dequantised layer by layer.",
            inputs=[
                io.Combo.Input("model_name", options=model_choices(),
                               tooltip="diffusers/<folder>: a hub download (rhymes-ai/Allegro or Allegro-TI2V) in "
                                       "models/diffusers/. Otherwise a transformer .safetensors or .gguf in "
                                       "models/diffusion_models/ or models/unet/ (scripts/convert_weights.py makes "
                                       "GGUF and scaled-fp8 files)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="bf16",
                               tooltip="How the weights are stored in memory: bf16 (5.5 GB, the release dtype), fp16, "
                                       "fp32 (11 GB), or fp8_e4m3fn (2.8 GB; computed in bf16/fp16). fp8_e4m3fn_fast "
                                       "also multiplies in fp8 on GPUs that support it (RTX 40xx, H100 …; elsewhere "
                                       "as fp8_e4m3fn). GGUF and scaled-fp8 files keep their own format: this sets "
                                       "the dtype of the few tensors they keep unquantised (fp8 choices: bf16), and "
                                       "fp8_e4m3fn_fast turns on fp8 multiplication for scaled-fp8 files."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="A native ComfyUI MODEL: works with the Allegro "
                                                                   "sampler, KSampler and model patches.")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None):
        return sources.check_choice(model_name, model_choices(), "diffusion_models", ".safetensors or .gguf file")

    @classmethod
    def execute(cls, model_name, weight_dtype) -> io.NodeOutput:
        weight_dtype = checks.choice("Load Allegro Model", "weight_dtype", weight_dtype, list(WEIGHT_DTYPES))
        return io.NodeOutput(load_model(model_name, weight_dtype))


class AllegroVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_VAELoader",
            display_name="Load Allegro VAE",
            category=CATEGORY,
            description="Loads the Allegro 3D VAE (8x spatial, 4x temporal, 4 channels): vae/ of a hub folder under "
                        "models/diffusers/, or a .safetensors in models/vae/. The model card recommends fp32.",
            inputs=[
                io.Combo.Input("vae_name", options=vae_choices(),
                               tooltip="diffusers/<folder> (uses its vae/), or a VAE .safetensors in models/vae/."),
                io.Combo.Input("dtype", options=list(VAE_DTYPES), default="fp32",
                               tooltip="fp32 is the release dtype and the model card's advice; bf16/fp16 halve its "
                                       "memory."),
            ],
            outputs=[io.Vae.Output(display_name="vae", tooltip="A ComfyUI VAE: 'Allegro VAE Decode' (tiled, no "
                                                               "holes), core VAE Decode/Encode and VideoHelperSuite "
                                                               "accept it.")],
        )

    @classmethod
    def validate_inputs(cls, vae_name=None):
        return sources.check_choice(vae_name, vae_choices(), "vae")

    @classmethod
    def execute(cls, vae_name, dtype) -> io.NodeOutput:
        dtype = checks.choice("Load Allegro VAE", "dtype", dtype, list(VAE_DTYPES))
        return io.NodeOutput(load_vae(vae_name, dtype))


class AllegroT5Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_T5Loader",
            display_name="Load Allegro T5 (diffusers)",
            category=CATEGORY,
            description="Loads T5 v1.1 XXL from a hub folder's text_encoder/ (sharded safetensors; the duplicate .bin "
                        "shards are ignored) as a native CLIP. With t5xxl_fp16.safetensors in models/text_encoders/ "
                        "use the stock 'Load CLIP' (type mochi) instead: it gives the same CLIP.",
            inputs=[
                io.Combo.Input("text_encoder", options=sources.diffusers_choices("text_encoder"),
                               tooltip="diffusers/<folder>: a hub download with text_encoder/ (about 19 GB in fp32)."),
                io.Combo.Input("dtype", options=list(TEXT_DTYPES), default="default",
                               tooltip="default: ComfyUI's choice for the device (fp16 on GPUs); fp32 doubles the "
                                       "memory."),
            ],
            outputs=[io.Clip.Output(display_name="clip", tooltip="T5 with attention masks, for 'Allegro Text Encode'.")],
        )

    @classmethod
    def execute(cls, text_encoder, dtype) -> io.NodeOutput:
        from .t5_clip import build_t5_clip
        dtype = checks.choice("Load Allegro T5 (diffusers)", "dtype", dtype, list(TEXT_DTYPES))
        checkpoint = sources.read(text_encoder, "text_encoders", "text_encoder")
        _, weights = identify(checkpoint, ("t5_encoder",), "Load Allegro T5 (diffusers)")
        clip = build_t5_clip(checkpoint.declared, weights, TEXT_DTYPES[dtype], str(checkpoint.source))
        clip.allegro_source = text_encoder                 # named in the sampler's messages
        return io.NodeOutput(clip)
