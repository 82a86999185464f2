"""Loader nodes: the Allegro DiT (T2V or TI2V), its VAE, and T5 from a diffusers folder."""
import json
import logging
from pathlib import Path

import torch

from ..allegro import checkpoints
from . import sources
from .comfy_model import build_model

CATEGORY = "Allegro/loaders"

WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                 "fp8_e4m3fn": torch.float8_e4m3fn}
VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_DTYPES = {"default": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def read_component(choice: str, folder_kind: str, component: str):
    """(config or None, state dict, metadata, path) from a diffusers folder or a single file."""
    path = sources.resolve(choice, folder_kind)
    if path.is_dir():
        folder = checkpoints.find_component(path, component)
        config, state_dict, metadata = checkpoints.read_diffusers_component(folder)
        return config, state_dict, metadata, folder
    state_dict, metadata = checkpoints.read_safetensors(path)
    return None, state_dict, metadata, path


def expect_kind(state_dict, wanted: tuple[str, ...], path, node: str):
    """(kind, state dict with any whole-pipeline prefix removed); a clear error for other weights."""
    found = checkpoints.identify_checkpoint(state_dict)
    if found.kind not in wanted:
        expected = " or ".join(checkpoints.KIND_DESCRIPTIONS[w] for w in wanted)
        raise ValueError(f"{path.name} is {found.description}, not {expected}. Pick the right file in '{node}'.")
    return found.kind, checkpoints.strip_prefix(state_dict, found.prefix)


def check_choice(value, choices: list[str], folder_kind: str):
    """VALIDATE_INPUTS for a weights list: True, or what is wrong and what can be picked. (It replaces
    ComfyUI's "Value not in list", which says "(list of length N)" once the list is long.)"""
    if value is None or value in choices:      # None: linked from another node, checked when it runs
        return True
    shown = ", ".join(choices[:12]) + (f", … ({len(choices)} in all)" if len(choices) > 12 else "")
    suffix = Path(str(value)).suffix.lower()
    if suffix in checkpoints.PICKLE_SUFFIXES:
        problem = (f"is a PyTorch pickle ({suffix}): pickles can run code when loaded, so they are never listed or "
                   "opened. Use the .safetensors version of these weights")
    else:
        problem = f"is not a .safetensors file in models/{folder_kind}/ nor a folder in models/diffusers/"
    return f"{value!r} {problem}. Available: {shown or 'nothing'}."   # ComfyUI prefixes the input's name


class AllegroModelLoader:
    DESCRIPTION = ("Loads the Allegro DiT (text-to-video) or Allegro-TI2V (text-image-to-video), told apart by "
                   "its weights: a single .safetensors from models/diffusion_models/, or the hub folder "
                   "(model_index.json, transformer/ …) under models/diffusers/.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A native ComfyUI MODEL: works with the Allegro sampler, KSampler and model patches.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        choices = sources.diffusers_choices("transformer") + sources.file_choices("diffusion_models")
        return {"required": {
            "model_name": (choices, {"tooltip": "diffusers/<folder>: a hub download (rhymes-ai/Allegro or "
                                                "Allegro-TI2V) in models/diffusers/. Otherwise a transformer "
                                                ".safetensors in models/diffusion_models/."}),
            "weight_dtype": (list(WEIGHT_DTYPES), {"default": "bf16",
                             "tooltip": "How the weights are stored in memory: bf16 (5.5 GB, the release dtype), "
                                        "fp16, fp32 (11 GB), or fp8_e4m3fn (2.8 GB; computed in bf16/fp16)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name=None):
        return check_choice(model_name, cls.INPUT_TYPES()["required"]["model_name"][0], "diffusion_models")

    def load(self, model_name, weight_dtype):
        config, state_dict, metadata, path = read_component(model_name, "diffusion_models", "transformer")
        kind, state_dict = expect_kind(state_dict, ("allegro_t2v", "allegro_ti2v"), path, "Load Allegro Model")
        if config is None:
            config = checkpoints.infer_transformer_config(state_dict, metadata, source=path.name)
        else:
            declared = checkpoints.normalise_transformer_config(config)
            if declared["ti2v"] != (kind == "allegro_ti2v"):
                raise ValueError(f"{path}: config.json describes an Allegro{'-TI2V' if declared['ti2v'] else ' T2V'} "
                                 f"model but the weights are {checkpoints.KIND_DESCRIPTIONS[kind]}; the folder mixes "
                                 "two downloads.")
            # The same check as a single file's embedded config: every size config.json states must be
            # the tensors' (a clear error naming the setting instead of a wall of size mismatches).
            config = checkpoints.infer_transformer_config(state_dict, {"config": json.dumps(config)},
                                                          source=str(path / "config.json"))
        # The only TI2V reference (the original repo) shares RoPE tables between equal-length axes.
        config = {**config, "rope_shares_equal_lengths": kind == "allegro_ti2v"}
        logging.info("Loading %s from %s", checkpoints.KIND_DESCRIPTIONS[kind], path)
        return (build_model(config, state_dict, WEIGHT_DTYPES[weight_dtype]),)


class AllegroVAELoader:
    DESCRIPTION = ("Loads the Allegro 3D VAE (8x spatial, 4x temporal, 4 channels): vae/ of a hub folder under "
                   "models/diffusers/, or a .safetensors in models/vae/. The model card recommends fp32.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("A ComfyUI VAE: 'Allegro VAE Decode' (tiled, no holes), core VAE Decode/Encode and "
                       "VideoHelperSuite accept it.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        choices = sources.diffusers_choices("vae") + sources.file_choices("vae")
        return {"required": {
            "vae_name": (choices, {"tooltip": "diffusers/<folder> (uses its vae/), or a VAE .safetensors in models/vae/."}),
            "dtype": (list(VAE_DTYPES), {"default": "fp32", "tooltip": "fp32 is the release dtype and the model "
                                                                      "card's advice; bf16/fp16 halve its memory."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, vae_name=None):
        return check_choice(vae_name, cls.INPUT_TYPES()["required"]["vae_name"][0], "vae")

    def load(self, vae_name, dtype):
        from .comfy_vae import build_vae
        config, state_dict, metadata, path = read_component(vae_name, "vae", "vae")
        _, state_dict = expect_kind(state_dict, ("allegro_vae",), path, "Load Allegro VAE")
        if config is None:
            config = checkpoints.infer_vae_config(state_dict, metadata, source=path.name)
        return (build_vae(config, state_dict, VAE_DTYPES[dtype]),)


class AllegroT5Loader:
    DESCRIPTION = ("Loads T5 v1.1 XXL from a hub folder's text_encoder/ (sharded safetensors; the duplicate "
                   ".bin shards are ignored) as a native CLIP. With t5xxl_fp16.safetensors in models/text_encoders/ "
                   "use the stock 'Load CLIP' (type mochi) instead: it gives the same CLIP.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CLIP",)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("T5 with attention masks, for 'Allegro Text Encode'.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": (sources.diffusers_choices("text_encoder"), {
                "tooltip": "diffusers/<folder>: a hub download with text_encoder/ (about 19 GB in fp32)."}),
            "dtype": (list(TEXT_DTYPES), {"default": "default",
                      "tooltip": "default: ComfyUI's choice for the device (fp16 on GPUs); fp32 doubles the memory."}),
        }}

    def load(self, text_encoder, dtype):
        from .t5_clip import build_t5_clip
        folder = checkpoints.find_component(sources.resolve(text_encoder, "text_encoders"), "text_encoder")
        config, state_dict, _ = checkpoints.read_diffusers_component(folder)
        _, state_dict = expect_kind(state_dict, ("t5_encoder",), folder, "Load Allegro T5 (diffusers)")
        return (build_t5_clip(config, state_dict, TEXT_DTYPES[dtype]),)
