"""Allegro sampler: ComfyUI's samplers and schedulers with Allegro's reference defaults, plus the
reference pipeline's schedule and random stream so a graph can reproduce it exactly."""
import inspect

import torch
from comfy_api.v0_0_2 import io

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..allegro.config import PATCH_SIZE
from ..allegro.schedule import MAX_SCHEDULE_STEPS, ReferenceNoise, linspace_schedule, schedule_length
from . import checks, video_latent
from .memory import check_sampling_fits

CATEGORY = "Allegro/sampling"
REFERENCE_SCHEDULER = "linspace (reference)"
NOISE_STREAMS = ("reference", "comfy")


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


class AllegroSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_Sampler",
            display_name="Allegro Sampler",
            category=CATEGORY,
            description="Samples an Allegro video latent. Defaults are the reference pipeline's: Euler ancestral, "
                        "100 steps, CFG 7.5 (8 for TI2V), evenly spaced timesteps and one random stream, which "
                        "reproduce the official results for the same seed. Every ComfyUI sampler and scheduler works.",
            inputs=[
                io.Model.Input("model", tooltip="The Allegro (or Allegro-TI2V) model from 'Load Allegro Model'."),
                io.Conditioning.Input("positive", tooltip="What the video should show (from 'Allegro Text Encode', "
                                                          "or from 'Allegro TI2V Conditioning' for image-to-video)."),
                io.Conditioning.Input("negative", tooltip="What to steer away from (the reference negative prompt by "
                                                          "default)."),
                io.Latent.Input("latent", tooltip="Empty Allegro latent (text-to-video), the TI2V node's latent, or an "
                                                  "encoded video with denoise below 1 (video-to-video)."),
                io.Int.Input("seed", default=42, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Random seed. With the reference noise stream, the same seed as the official "
                                     "script gives the same video (single_inference.py uses 42)."),
                io.Int.Input("steps", default=100, min=1, max=1000, tooltip="Denoising steps; the reference uses 100."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance: 7.5 for T2V, 8.0 for TI2V in the reference; 1 "
                                       "disables it."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler_ancestral",
                               tooltip="Sampling method; the reference uses Euler ancestral."),
                io.Combo.Input("scheduler", options=[REFERENCE_SCHEDULER] + list(comfy.samplers.KSampler.SCHEDULERS),
                               default=REFERENCE_SCHEDULER,
                               tooltip="Noise schedule. 'linspace (reference)': timesteps evenly spaced from 999 to 0, "
                                       "exactly as the official pipeline; 'normal' is ComfyUI's equivalent."),
                io.Combo.Input("noise_stream", options=list(NOISE_STREAMS), default="reference",
                               tooltip="'reference': one CPU generator draws the start noise and every ancestral "
                                       "step's noise, as the official pipeline does. 'comfy': ComfyUI's usual noise "
                                       "(KSampler's results)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 for text/image-to-video. Below 1, the input latent is kept in part "
                                       "(video-to-video: encode a video with the Allegro VAE first)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The denoised video latent; decode it with "
                                                                     "'Allegro VAE Decode'.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, sampler_name, scheduler, noise_stream,
                denoise) -> io.NodeOutput:
        node = "Allegro Sampler"
        seed = checks.whole_number(node, "seed", seed, 0, 0xffffffffffffffff)
        steps = checks.whole_number(node, "steps", steps, 1, MAX_SCHEDULE_STEPS)
        cfg = checks.finite_number(node, "cfg", cfg)
        denoise = checks.finite_number(node, "denoise", denoise, 0.0, 1.0)
        sampler_name = checks.choice(node, "sampler_name", sampler_name, comfy.samplers.KSampler.SAMPLERS)
        scheduler = checks.choice(node, "scheduler", scheduler,
                                  [REFERENCE_SCHEDULER] + list(comfy.samplers.KSampler.SCHEDULERS))
        noise_stream = checks.choice(node, "noise_stream", noise_stream, list(NOISE_STREAMS))
        # Checked before ComfyUI's empty-latent fix, which would quietly turn an image latent (e.g. from
        # 'Empty Latent Image') into a one-frame video and cut a 16-channel one down to 4 channels.
        check_latent(latent["samples"])
        check_text_width(model, positive, negative)
        latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        check_sampling_fits(model, latent_image.shape, cfg)
        sigmas = schedule(model, sampler_name, scheduler, steps, denoise)
        if noise_stream == "reference":
            stream = ReferenceNoise(seed)
            noise = stream.draw(latent_image.shape)
            sampler = make_sampler(sampler_name, stream, latent_image.shape, model.load_device)
        else:
            noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
            sampler = comfy.samplers.sampler_object(sampler_name)
        callback = latent_preview.prepare_callback(model, len(sigmas) - 1)
        samples = comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
            noise_mask=latent.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        if not checks.is_finite(samples):
            raise ValueError(f"The sampled latent holds {checks.count_non_finite(samples)}, so it was not passed on. "
                             f"Most likely cause: {likely_cause(model, positive, negative, latent, cfg)}")
        out = latent.copy()
        out["samples"] = samples
        return io.NodeOutput(out)


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
