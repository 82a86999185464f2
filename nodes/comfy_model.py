"""Allegro as a native ComfyUI model: a BaseModel subclass over the library's DiT, wrapped in a
ModelPatcher, so ComfyUI's model management loads, offloads and unloads it like its own models
and the stock KSampler / SamplerCustomAdvanced / LoRA and model-patch nodes work on it."""
import logging

import torch

import comfy.conds
import comfy.latent_formats
import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.supported_models_base
import comfy.utils

from ..allegro.schedule import sigma_at, timestep_at, training_sigmas
from ..allegro.transformer import AllegroTransformer3D, TransformerConfig
from .step_cache import cache_call_arguments

LATENT_SCALE = 0.13


class AllegroLatentFormat(comfy.latent_formats.LatentFormat):
    latent_channels = 4
    latent_dimensions = 3

    def __init__(self):
        self.scale_factor = LATENT_SCALE
        # Preview colours only. Allegro's VAE keeps the block layout of the SD image VAE it was
        # inflated from, so SD1's latent-to-RGB factors give a rough preview; no factors fitted
        # to Allegro's own VAE are published.
        self.latent_rgb_factors = comfy.latent_formats.SD15().latent_rgb_factors


class ModelSamplingAllegro(comfy.model_sampling.EPS, comfy.model_sampling.ModelSamplingDiscrete):
    """Allegro's training schedule (1000 steps, betas linear 1e-4..2e-2, epsilon) sampled the way
    the reference Euler schedulers do: fractional timesteps with sigma interpolated linearly in the
    sigma table (ComfyUI's default picks the nearest integer step in log-sigma), and the initial
    noise scaled by sigma_max (not sqrt(1 + sigma_max^2))."""

    def __init__(self, model_config=None, zsnr=None):
        torch.nn.Module.__init__(self)
        self.num_timesteps = 1000
        self.linear_start, self.linear_end, self.zsnr = 1e-4, 2e-2, False
        self.set_sigmas(training_sigmas())
        self.sigma_data = 1.0

    def timestep(self, sigma):
        return timestep_at(sigma, self.sigmas).to(sigma.device)

    def sigma(self, timestep):
        return sigma_at(timestep, self.sigmas).to(timestep.device)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = comfy.model_sampling.reshape_sigma(sigma, noise.ndim)
        return noise * sigma + latent_image


def comfy_attention(q, k, v, mask=None):
    """ComfyUI's configured attention (SDPA, sage, flash… per its launch flags) on [B, heads, N, d]."""
    attention = comfy.ldm.modules.attention
    chosen = attention.optimized_attention
    # On CPU ComfyUI falls back to its chunked attentions (made for torch without SDPA); PyTorch's SDPA is
    # exact as well and 1.6x faster over Allegro's long sequences (bench/bench_sampler.py).
    if q.device.type == "cpu" and chosen in (attention.attention_sub_quad, attention.attention_split):
        chosen = attention.attention_pytorch
    return chosen(q, k, v, q.shape[1], mask=mask, skip_reshape=True, skip_output_reshape=True)


class AllegroDiffusionModel(AllegroTransformer3D):
    """The library DiT with the constructor and call signature BaseModel uses."""

    def __init__(self, image_model=None, dtype=None, device=None, operations=None, **config):
        super().__init__(TransformerConfig.from_dict(config), operations=operations, device=device, dtype=dtype)
        self.dtype = dtype
        self.attention = comfy_attention

    def forward(self, x, timestep, context=None, attention_mask=None, control=None, transformer_options={}, **kwargs):
        return super().forward(x, timestep, context, attention_mask, **cache_call_arguments(transformer_options))


class AllegroModelConfig(comfy.supported_models_base.BASE):
    unet_config = {"image_model": "allegro"}
    unet_extra_config = {}
    latent_format = AllegroLatentFormat
    # Activations per latent element; with flash/efficient attention 88x720x1280 + CFG needs ~6 GB.
    memory_usage_factor = 0.45
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def get_model(self, state_dict, prefix="", device=None):
        return AllegroBaseModel(self, device=device)


class AllegroBaseModel(comfy.model_base.BaseModel):
    def __init__(self, model_config, model_type=comfy.model_base.ModelType.EPS, device=None):
        super().__init__(model_config, model_type, device=device, unet_model=AllegroDiffusionModel)
        self.model_sampling = ModelSamplingAllegro(model_config)
        self.is_ti2v = bool(model_config.unet_config.get("ti2v", False))

    def concat_cond(self, **kwargs):
        """TI2V: [masked-video latent (scaled into model space), 4-channel folded frame mask]."""
        masked_video = kwargs.get("allegro_masked_video")
        frame_mask = kwargs.get("allegro_frame_mask")
        if not self.is_ti2v:
            if masked_video is not None:
                raise ValueError("The conditioning carries Allegro-TI2V image frames, but the loaded model is "
                                 "Allegro T2V. Load the Allegro-TI2V transformer, or remove the TI2V node.")
            return None
        if masked_video is None or frame_mask is None:
            raise ValueError("Allegro-TI2V needs image conditioning: connect 'Allegro TI2V Conditioning' "
                             "(first frame, optional last frame) between the text encode and the sampler.")
        noise = kwargs["noise"]
        if masked_video.shape[2:] != noise.shape[2:]:
            raise ValueError(f"The TI2V conditioning was made for latent {tuple(masked_video.shape[2:])} "
                             f"but the sampled latent is {tuple(noise.shape[2:])}: use the LATENT output of "
                             "the TI2V conditioning node (same width, height and length).")
        device = kwargs["device"]
        masked_video = self.process_latent_in(masked_video)
        batch = noise.shape[0]
        return torch.cat([comfy.utils.resize_to_batch_size(masked_video, batch).to(device),
                          comfy.utils.resize_to_batch_size(frame_mask, batch).to(device)], dim=1)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None:
            out["attention_mask"] = comfy.conds.CONDRegular(attention_mask)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
        return out


def build_model(config: dict, state_dict: dict, weight_dtype=None) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher over the DiT described by `config` (diffusers-style keys + "ti2v")."""
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model_config = AllegroModelConfig({**config, "image_model": "allegro"})
    parameters = comfy.utils.calculate_parameters(state_dict)
    if weight_dtype is None:
        weight_dtype = comfy.model_management.unet_dtype(model_params=parameters,
                                                         supported_dtypes=model_config.supported_inference_dtypes)
    manual_cast_dtype = comfy.model_management.unet_manual_cast(weight_dtype, load_device,
                                                                model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(weight_dtype, manual_cast_dtype)
    model = model_config.get_model(state_dict, device=offload_device)
    missing, unexpected = model.diffusion_model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"The weights do not match the model config: missing {missing[:8]}, unexpected {unexpected[:8]}")
    logging.info("Allegro %s DiT: %.2fB parameters, weights %s, compute %s", "TI2V" if model.is_ti2v else "T2V",
                 parameters / 1e9, weight_dtype, manual_cast_dtype or weight_dtype)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
