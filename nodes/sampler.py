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
from ..allegro.schedule import ReferenceNoise, linspace_schedule
from . import video_latent

CATEGORY = "Allegro/sampling"
REFERENCE_SCHEDULER = "linspace (reference)"
NOISE_STREAMS = ("reference", "comfy")


def schedule(model, sampler_name: str, scheduler: str, steps: int, denoise: float) -> torch.Tensor:
    """Sigmas [steps + 1] for the last `denoise` fraction of a longer schedule, as KSampler does
    (including its extra step for the samplers that discard the penultimate sigma)."""
    if denoise <= 0:
        return torch.FloatTensor([])
    total = steps if denoise >= 1 else int(steps / denoise)
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
        # Checked before ComfyUI's empty-latent fix, which would quietly turn an image latent (e.g. from
        # 'Empty Latent Image') into a one-frame video and cut a 16-channel one down to 4 channels.
        check_latent(latent["samples"])
        latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
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
        out = latent.copy()
        out["samples"] = samples
        return io.NodeOutput(out)


def check_latent(samples: torch.Tensor):
    if not video_latent.is_video_latent(samples):
        raise ValueError(f"Allegro samples video latents {video_latent.SHAPE}; the 'latent' input is "
                         f"shaped {list(samples.shape)}"
                         + (" (an image latent)" if samples.ndim == 4 else "") + ". Use 'Allegro Empty Latent Video', "
                         "the TI2V node's latent or 'Allegro VAE Encode'.")
    if samples.shape[-1] % PATCH_SIZE or samples.shape[-2] % PATCH_SIZE:
        raise ValueError(f"The latent's height and width ({samples.shape[-2]}x{samples.shape[-1]}) must be "
                         f"multiples of {PATCH_SIZE} (video sides a multiple of 16 pixels).")
