"""PeRFlow sampling in ComfyUI (the node is nodes/perflow.py): the seed's PeRFlow step (allegro/perflow.py) as a
ComfyUI SAMPLER over PeRFlow timesteps.

How PeRFlow maps onto ComfyUI. ComfyUI calls the Allegro MODEL as EPS: the DiT gets
x / sqrt(1 + sigma^2) and the fractional timestep whose DDPM sigma is `sigma` (at most 999), and its
output is read as noise. A PeRFlow model must instead get the sampling state itself (no scaling) at
timestep t * 1000, up to 1000 itself, which no EPS sigma reaches (nor can it give the latent back
exactly after a scale and an unscale). So, for the duration of its run only, the sampler gives the
model a PeRFlow `model_sampling` in which:
  * sigma IS the DiT timestep t * 1000: the SIGMAS output is the reference's integer timesteps
    (1000, 875, ... for 8 steps over 4 windows) followed by 0, and `timestep(sigma) = sigma`;
  * the model input is the state unchanged (`calculate_input` is the identity);
  * the output becomes a "denoised" latent x - t * v, v the PeRFlow velocity of the prediction type
    (the straight-line estimate of the clean latent that previews show), so ComfyUI's Euler step
    x + (x - denoised) / sigma * (sigma_next - sigma) is the reference's x + (t_next - t) * v;
  * the start is unit noise at t = 1 (the reference's initial latent, init sigma 1).
Classifier-free guidance mixes these denoised latents, which are affine in the model output with
the same x, so it equals the reference's mix of the outputs. The model's own model_sampling is put
back when the run ends. Timestep ranges of conditioning (ConditioningSetTimestepRange) are worked out
by ComfyUI before the sampler runs, in the model's DDPM sigmas, so they do not apply to PeRFlow time.
"""
import torch

import comfy.k_diffusion.sampling
import comfy.samplers

from ..allegro.perflow import PeRFlow, PeRFlowConfig, per_item


NODE = "Allegro PeRFlow Sampler"


class PeRFlowModelSampling(torch.nn.Module):
    """A ComfyUI model_sampling in PeRFlow time: sigma = DiT timestep = t * num_train_timesteps."""

    def __init__(self, perflow: PeRFlow):
        super().__init__()
        self.perflow = perflow
        self.count = perflow.config.num_train_timesteps
        # ComfyUI's schedulers read a sigma table; here it is every timestep, 1 .. count.
        self.register_buffer("sigmas", torch.arange(1, self.count + 1, dtype=torch.float32))

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma

    def sigma(self, timestep):
        return timestep

    def percent_to_sigma(self, percent):
        return float(min(max(1.0 - percent, 0.0), 1.0) * self.count)

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        velocity = self.perflow.velocity(model_output, model_input, sigma)
        return model_input - per_item(sigma / self.count, model_input.ndim) * velocity

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return self.perflow.start_latent(latent_image, noise, first(sigma))

    def inverse_noise_scaling(self, sigma, latent):
        # Undoes start_latent's signal scaling, so that a run split in two (SplitSigmas, the second
        # half without noise) continues from the very state the first half ended in.
        alpha = self.perflow.signal_level(first(sigma))
        return latent if alpha in (0.0, 1.0) else latent / alpha ** 0.5


def first(sigma) -> float:
    """A sigma as a float (ComfyUI passes one per batch item; they are all the same)."""
    return float(sigma.flatten()[0]) if torch.is_tensor(sigma) else float(sigma)


class PeRFlowSampler(comfy.samplers.KSAMPLER):
    """ComfyUI's Euler sampler run with the model in PeRFlow time (see the module docstring)."""

    def __init__(self, config: PeRFlowConfig):
        super().__init__(comfy.k_diffusion.sampling.sample_euler)
        self.perflow = PeRFlow(config)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        model = model_wrap.inner_model
        check_model(model)
        check_sigmas(sigmas, self.perflow.config.num_train_timesteps)
        own_sampling = model.model_sampling
        model.model_sampling = PeRFlowModelSampling(self.perflow)
        try:
            return super().sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
                                  disable_pbar)
        finally:
            model.model_sampling = own_sampling


def check_model(model):
    """PeRFlow's coefficients use Allegro's DDPM table, so only an Allegro MODEL is accepted."""
    if getattr(getattr(model, "model_config", None), "unet_config", {}).get("allegro") is None:
        raise ValueError(f"The {NODE} works on Allegro models (its step uses Allegro's training noise table); the "
                         f"model connected to the guider is a {type(model).__name__}. Load the model with 'Load "
                         f"Allegro Model'.")


def check_sigmas(sigmas: torch.Tensor, count: int):
    """PeRFlow sigmas are whole timesteps from `count` down to 0. A diffusion schedule (Allegro's
    runs from 157.4 through fractional values to 0) would be read as the wrong times."""
    values = [float(s) for s in sigmas]
    if not all(value.is_integer() and 0 <= value <= count for value in values):
        shown = ", ".join(f"{value:.4g}" for value in values[:4]) + (", …" if len(values) > 4 else "")
        raise ValueError(f"The {NODE} got sigmas {shown}, but it runs on PeRFlow timesteps, whole numbers from "
                         f"{count} down to 0 — diffusion schedules (BasicScheduler's, KSampler's) do not apply. "
                         f"Connect the sigmas output of '{NODE}' (optionally through SplitSigmas).")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"The {NODE} needs decreasing sigmas; got {values}. Connect the sigmas output of '{NODE}'.")
