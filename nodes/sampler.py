"""Allegro sampler: ComfyUI's samplers and schedulers with Allegro's reference defaults, plus the
reference pipeline's schedule and random stream so a graph can reproduce it exactly."""
from comfy_api.v0_0_2 import io

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..allegro.schedule import MAX_SCHEDULE_STEPS, ReferenceNoise
from ..adapters import checks
from ..adapters.memory import check_sampling_fits
from ..adapters.sampling import (REFERENCE_SCHEDULER, check_latent, check_text_width, likely_cause, make_sampler,
                                 schedule)

CATEGORY = "Allegro/sampling"
NOISE_STREAMS = ("reference", "comfy")


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


