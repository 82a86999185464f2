"""Allegro as a native ComfyUI model: a BaseModel subclass over the library's DiT, wrapped in a
ModelPatcher, so ComfyUI's model management loads, offloads and unloads it like its own models
and the stock KSampler / SamplerCustomAdvanced / LoRA and model-patch nodes work on it.

The DiT's forward opens to core patches the way core's own DiTs do (comfy/ldm/wan): it runs through
the DIFFUSION_MODEL wrappers (EasyCache skips steps there), hands transformer_options to ComfyUI's
attention (per-model attention overrides), and runs patches_replace["dit"][("double_block", i)] in
place of block i (SkipLayerGuidanceDiT and other block patches). The package's own features reach the
DiT the same way, as wrappers in transformer_options (adapters/dit_seam.py); this module names none."""
import logging

import torch

import comfy.conds
import comfy.latent_formats
import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.supported_models_base
import comfy.utils

from ..allegro.config import (LATENT_CHANNELS, LATENT_SCALE, SPATIAL_FACTOR, TEMPORAL_FACTOR, TEXT_TOKENS,
                              TransformerConfig)
from ..allegro.quantization import QuantizedWeight
from ..allegro.schedule import sigma_at, timestep_at, training_sigmas
from ..allegro.transformer import AllegroTransformer3D
from . import compat, dit_seam, model_size, quantized_ops
from .conditioning import FRAME_MASK, LATENT_SCALE_KEY, MASKED_VIDEO


class AllegroLatentFormat(comfy.latent_formats.LatentFormat):
    latent_channels = LATENT_CHANNELS
    latent_dimensions = 3
    # Pixels per latent pixel and frames per latent frame: newer ComfyUI reads these (context
    # windows, size helpers); older releases ignore them.
    spacial_downscale_ratio = SPATIAL_FACTOR
    temporal_downscale_ratio = TEMPORAL_FACTOR

    def __init__(self, scale_factor: float = LATENT_SCALE):
        """scale_factor: the loaded model's (allegro.config.decide_latent_scale); the release's by default."""
        self.scale_factor = scale_factor
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


def comfy_attention(q, k, v, mask=None, transformer_options=None):
    """ComfyUI's configured attention (SDPA, sage, flash… per its launch flags) on [B, heads, N, d].
    With transformer_options, an `optimized_attention_override` in them (a per-model attention
    patch) runs instead, as in core's own models."""
    attention = comfy.ldm.modules.attention
    chosen = attention.optimized_attention
    # On CPU ComfyUI falls back to its chunked attentions (made for torch without SDPA); PyTorch's SDPA is
    # exact as well and 1.6x faster over Allegro's long sequences (bench/bench_sampler.py).
    if q.device.type == "cpu" and chosen in (attention.attention_sub_quad, attention.attention_split):
        chosen = attention.attention_pytorch
    extra = {} if transformer_options is None else {"transformer_options": transformer_options}
    return chosen(q, k, v, q.shape[1], mask=mask, skip_reshape=True, skip_output_reshape=True, **extra)


class AllegroDiffusionModel(AllegroTransformer3D):
    """The library DiT with the constructor and call signature BaseModel uses."""

    def __init__(self, allegro: TransformerConfig, image_model=None, dtype=None, device=None, operations=None, **_):
        super().__init__(allegro, operations=operations, device=device, dtype=dtype)
        self.dtype = dtype
        self.attention = comfy_attention

    def forward(self, x, timestep, context=None, attention_mask=None, transformer_options=None, **kwargs):
        # As core's DiTs: DIFFUSION_MODEL wrappers (EasyCache, …) see transformer_options as the last
        # positional argument.
        transformer_options = {} if transformer_options is None else transformer_options
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                            transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers).execute(
            x, timestep, context, attention_mask, transformer_options, **kwargs)

    def _forward(self, x, timestep, context, attention_mask, transformer_options, control=None, **kwargs):
        transformer_options["total_blocks"] = len(self.transformer_blocks)
        transformer_options["block_type"] = "double"
        return super().forward(x, timestep, context, attention_mask, dit_seam.wrappers_for(transformer_options))


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
        self.is_ti2v = model_config.unet_config["allegro"].ti2v

    def concat_cond(self, **kwargs):
        """TI2V: [masked-video latent (scaled into model space), 4-channel folded frame mask]."""
        masked_video = kwargs.get(MASKED_VIDEO)
        frame_mask = kwargs.get(FRAME_MASK)
        if not self.is_ti2v:
            if masked_video is not None:
                raise ValueError("The conditioning carries Allegro-TI2V image frames, but the loaded model is "
                                 "Allegro T2V. Load the Allegro-TI2V transformer, or remove the TI2V node.")
            return None
        if masked_video is None or frame_mask is None:
            raise ValueError("Allegro-TI2V needs image conditioning: connect 'Allegro TI2V Conditioning' "
                             "(first frame, optional last frame) between the text encode and the sampler.")
        vae_scale, model_scale = kwargs.get(LATENT_SCALE_KEY), self.latent_format.scale_factor
        if vae_scale is not None and vae_scale != model_scale:
            raise ValueError(f"The TI2V conditioning was encoded by a VAE whose latent scale is {vae_scale:g}, but the "
                             f"model samples at {model_scale:g}: the VAE and the model come from different downloads. "
                             "Load both from the same Allegro-TI2V folder.")
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
        if kwargs.get("noise") is not None:
            model_size.warn_if_untrained_size(self.model_config.unet_config["allegro"], kwargs["noise"].shape)
        out = super().extra_conds(**kwargs)
        attention_mask, cross_attn = kwargs.get("attention_mask"), kwargs.get("cross_attn")
        if attention_mask is not None and cross_attn is not None and attention_mask.shape[-1] != cross_attn.shape[1]:
            raise ValueError(
                f"The text conditioning has {cross_attn.shape[1]} tokens but an attention mask for "
                f"{attention_mask.shape[-1]}: 'Conditioning (Concat)' joined two prompts and kept only the first "
                "one's mask, so Allegro cannot tell which of the added tokens are padding. Write both parts in one "
                f"'Allegro Text Encode' prompt (T5 reads {TEXT_TOKENS} tokens), or mix two prompts with "
                "'Conditioning (Combine)'.")
        if attention_mask is not None:
            out["attention_mask"] = comfy.conds.CONDRegular(attention_mask)
        if cross_attn is not None:
            # Not CONDCrossAttn, which repeats shorter captions to a common length: their masks would not follow.
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
        return out


def build_model(config: TransformerConfig, state_dict: dict, weight_dtype=None, latent_scale: float = LATENT_SCALE,
                fp8_matmul: bool = False, disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher over the DiT described by `config`, sampling latents scaled by `latent_scale`; the
    patcher core loaders use (a dynamic-VRAM one where ComfyUI runs it) unless `disable_dynamic`.
    Quantised weights (GGUF, scaled fp8) stay quantised (quantized_ops, with the core patcher class made
    to patch dequantised weights);
    `fp8_matmul` asks for fp8 matrix multiplication where ComfyUI says the device supports it, as
    core's `fp8_e4m3fn_fast`."""
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    model_config = AllegroModelConfig({"image_model": "allegro", "allegro": config})
    model_config.latent_format = AllegroLatentFormat(latent_scale)
    quantized = any(isinstance(value, QuantizedWeight) for value in state_dict.values())
    if quantized:
        model_config.custom_operations = quantized_ops.operations(
            fp8_matmul and comfy.model_management.supports_fp8_compute(load_device))
    elif fp8_matmul:
        model_config.optimizations["fp8"] = True        # core's pick_operations: fp8 ops where supported
    parameters = comfy.utils.calculate_parameters(state_dict)
    if weight_dtype is None:
        weight_dtype = comfy.model_management.unet_dtype(model_params=parameters,
                                                         supported_dtypes=model_config.supported_inference_dtypes)
    manual_cast_dtype = comfy.model_management.unet_manual_cast(weight_dtype, load_device,
                                                                model_config.supported_inference_dtypes)
    compat.set_inference_dtype(model_config, weight_dtype, manual_cast_dtype, load_device)
    model = model_config.get_model(state_dict, device=offload_device)
    # As core loaders: the patcher first, then the weights, loaded the way that patcher needs them.
    if quantized:
        patcher = quantized_ops.new_patcher(model, load_device, offload_device, disable_dynamic)
    else:
        patcher = compat.patcher_class(disable_dynamic)(model, load_device=load_device,
                                                              offload_device=offload_device)
    dit_seam.install_check(patcher)
    missing, unexpected = compat.load_weights(model.diffusion_model, state_dict, patcher)
    if missing or unexpected:
        raise ValueError(f"The weights do not match the model config: missing {missing[:8]}, unexpected {unexpected[:8]}")
    logging.info("Allegro %s DiT: %.2fB parameters, weights %s, compute %s, latent scale %g",
                 "TI2V" if model.is_ti2v else "T2V", parameters / 1e9, weight_dtype, manual_cast_dtype or weight_dtype,
                 latent_scale)
    return patcher
