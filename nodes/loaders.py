"""Loader nodes: the Allegro DiT (T2V or TI2V), its VAE, and T5 from a diffusers folder (adapters/loading.py
does the loading)."""
from comfy_api.v0_0_2 import io

from ..adapters import checks, sources
from ..adapters.loading import (TEXT_DTYPES, VAE_DTYPES, WEIGHT_DTYPES, load_model, load_t5, load_vae, model_choices,
                                vae_choices)

CATEGORY = "Allegro/loaders"



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
        dtype = checks.choice("Load Allegro T5 (diffusers)", "dtype", dtype, list(TEXT_DTYPES))
        return io.NodeOutput(load_t5(text_encoder, dtype))
