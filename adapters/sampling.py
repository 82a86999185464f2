"""Sampling an Allegro latent with ComfyUI's samplers (the node is nodes/sampler.py): the sigma schedule of a
sampler/scheduler choice (with the reference's evenly spaced timesteps as one choice), samplers that draw
their noise from the reference stream, and the checks that say what is wrong with a sampler's inputs."""
import inspect

import torch

import comfy.samplers

from ..allegro.config import PATCH_SIZE
from ..allegro.schedule import ReferenceNoise, linspace_schedule, schedule_length
from . import checks, video_latent


REFERENCE_SCHEDULER = "linspace (reference)"


def schedule(model, sampler_name: str, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """Sigmas [steps + 1] for the last `denoise` fraction of a longer schedule, as KSampler does
    (including its extra step for the samplers that discard the penultimate sigma)."""
    if denoise <= 0:
        return torch.FloatTensor([])
    total = schedule_length(steps, denoise)
    discard_penultimate = sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    model_sampling = model.get_model_object("model_sampling")
    count = total + 1 if discard_penultimate else total
    if scheduler == REFERENCE_SCHEDULER:
        _, sigmas = linspace_schedule(count, model_sampling.sigmas)
    else:
        sigmas = comfy.samplers.calculate_sigmas(model_sampling, scheduler, count).cpu()
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas[-(steps + 1):]


def make_sampler(sampler_name: str, noise_stream: ReferenceNoise | None, shape, device):
    """A ComfyUI sampler; with the reference stream, ancestral/SDE steps draw their noise from it."""
    sampler = comfy.samplers.sampler_object(sampler_name)
    function = getattr(sampler, "sampler_function", None)
    if noise_stream is not None and function is not None and "noise_sampler" in inspect.signature(function).parameters:
        sampler.extra_options = {**sampler.extra_options,
                                 "noise_sampler": lambda sigma, sigma_next: noise_stream.draw(shape, device)}
    return sampler


def allegro_config(model):
    """The TransformerConfig of an Allegro MODEL (None for other models)."""
    model_config = getattr(getattr(model, "model", None), "model_config", None)
    return getattr(model_config, "unet_config", {}).get("allegro")


def model_name(model) -> str:
    return getattr(getattr(model, "model", None), "allegro_source", None) or "from 'Load Allegro Model'"


def check_text_width(model, positive, negative):
    """The text states must be as wide as the DiT's caption projection takes (T5-XXL: 4096), or the
    first step fails inside a matrix product; say which text encoder and which DiT disagree."""
    config = allegro_config(model)
    if config is None:
        return
    for label, conditioning in (("positive", positive), ("negative", negative)):
        for states, extra in conditioning:
            width = states.shape[-1]
            if width != config.caption_channels:
                encoder = extra.get("allegro_text_encoder") or "the CLIP connected to the text encode node"
                raise ValueError(
                    f"The {label} conditioning is {width} wide (text encoder: {encoder}), but the Allegro DiT "
                    f"({model_name(model)}) takes text states {config.caption_channels} wide (its caption_channels): "
                    "this text encoder is not the one the DiT was trained with. Use T5-XXL (in 'Load CLIP' "
                    "t5xxl_fp16.safetensors, type mochi) or the text_encoder of the DiT's own download.")


def likely_cause(model, positive, negative, latent: dict, cfg: float) -> str:
    """What most likely made a sampled latent NaN/inf, checked from the inputs to the model."""
    if not checks.is_finite(latent["samples"]):
        return (f"the 'latent' input already holds {checks.count_non_finite(latent['samples'])}: fix the node that "
                "made it (for video-to-video, the encoded frames).")
    implausible = checks.implausible_values(latent["samples"])
    if implausible:
        return f"the 'latent' input: {implausible}. Fix the node that made it."
    for label, conditioning in (("positive", positive), ("negative", negative)):
        for states, extra in conditioning:
            if not checks.is_finite(states):
                return (f"the {label} conditioning holds {checks.count_non_finite(states)}: the text encoder produced "
                        "them (an fp16 T5 can overflow: load it in bf16 or fp32).")
            bad = [key for key, value in extra.items() if isinstance(value, torch.Tensor) and not checks.is_finite(value)]
            if bad:
                return f"the {label} conditioning's {bad[0]} holds NaN or infinity (from the node that added it)."
    dtype = getattr(model.model, "manual_cast_dtype", None) or model.model.get_dtype()
    if dtype == torch.float16:
        return ("the DiT computes in fp16, whose range Allegro's activations exceed: load it with weight_dtype "
                "bf16 (or fp32).")
    if abs(cfg) > 30:
        return f"cfg {cfg:g} is far beyond the reference's 7.5 (8 for TI2V): guidance that strong diverges."
    return ("the DiT produced them from finite inputs: a patch or LoRA applied to the model, or its config (its "
            "weights were checked when loaded). Try the model without patches.")


def check_latent(samples: torch.Tensor):
    if not video_latent.is_video_latent(samples):
        raise ValueError(f"Allegro samples video latents {video_latent.SHAPE}; the 'latent' input is "
                         f"shaped {list(samples.shape)}"
                         + (" (an image latent)" if samples.ndim == 4 else "") + ". Use 'Allegro Empty Latent Video', "
                         "the TI2V node's latent or 'Allegro VAE Encode'.")
    if video_latent.empty_axes(samples):
        raise ValueError(f"The 'latent' input is empty (shape {list(samples.shape)}: {video_latent.empty_axes(samples)}): "
                         "there is nothing to sample. Check the node that made it.")
    if samples.shape[-1] % PATCH_SIZE or samples.shape[-2] % PATCH_SIZE:
        raise ValueError(f"The latent's height and width ({samples.shape[-2]}x{samples.shape[-1]}) must be "
                         f"multiples of {PATCH_SIZE} (video sides a multiple of 16 pixels).")
