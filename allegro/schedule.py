"""Allegro's noise schedule, as its reference pipelines sample it.

Training: 1000 DDPM steps, betas linear from 1e-4 to 2e-2 (diffusers' "linear"; ComfyUI calls
the same curve "sqrt_linear"), epsilon prediction. Inference (diffusers' Euler schedulers with
"linspace" spacing): timesteps evenly spaced from 999 to 0 — fractional — and each step's sigma
linearly interpolated in the sigma table. `sigma_at` / `timestep_at` are that interpolation and
its exact inverse, so a sampler working in sigmas hands the model the reference's timesteps.
"""
import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 2e-2        # linear betas of Allegro's DDPM training schedule
# The longest schedule built: ten times the training timesteps (a longer one only revisits the same
# 1000 noise levels), the same cap as ComfyUI's own steps widget.
MAX_SCHEDULE_STEPS = 10_000


def schedule_length(steps: int, denoise: float) -> int:
    """Steps of the whole schedule whose last `steps` run when sampling at `denoise` (KSampler's rule:
    steps / denoise, so denoise 0.5 with 20 steps runs the second half of a 40-step schedule).
    ValueError with what to change when it would exceed MAX_SCHEDULE_STEPS (denoise 1e-7 would
    otherwise build 200 million entries, and 1e-300 an infinite schedule)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < denoise:
        raise ValueError(f"denoise must be above 0 to sample anything, got {denoise}")
    if denoise >= 1:
        total = float(steps)
    else:
        total = steps / denoise          # a float first: int() of an overflowed division would raise
    if total > MAX_SCHEDULE_STEPS:
        raise ValueError(
            f"steps {steps} at denoise {denoise:g} would build a schedule of {total:.3g} steps (denoise d runs the "
            f"last d of a schedule of steps / d steps); at most {MAX_SCHEDULE_STEPS} are allowed. Raise denoise to "
            f"at least {steps / MAX_SCHEDULE_STEPS:g} or lower the steps.")
    return int(total)


def training_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                            beta_end: float = BETA_END) -> torch.Tensor:
    """alpha_bar_t, the signal fraction left at each training timestep, decreasing, [num_train_timesteps]
    float32. Computed in float32 as the reference does (float64 would shift the table by ~1e-6)."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def training_sigmas(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                    beta_end: float = BETA_END) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), increasing, [num_train_timesteps] float32."""
    alphas_cumprod = training_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def sigma_at(timestep: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear sigma at (fractional) timesteps, in float64 like numpy.interp; float32 out."""
    t = timestep.to(torch.float64).clamp(0, len(table) - 1)
    low = t.floor().long().clamp(max=len(table) - 2)
    table64 = table.to(device=t.device, dtype=torch.float64)
    slope = table64[low + 1] - table64[low]
    return (slope * (t - low) + table64[low]).to(torch.float32)


def timestep_at(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Inverse of `sigma_at`: the fractional timestep whose interpolated sigma is `sigma`."""
    s = sigma.to(torch.float64)
    table64 = table.to(device=s.device, dtype=torch.float64)
    s = s.clamp(table64[0], table64[-1])
    high = torch.searchsorted(table64, s.contiguous()).clamp(1, len(table) - 1)
    low = high - 1
    fraction = (s - table64[low]) / (table64[high] - table64[low])
    # Exact up to float32 rounding: two adjacent float32 timesteps can share one float32 sigma,
    # so a round trip may land one float32 step (< 1e-5) away from the original timestep.
    return (low + fraction).to(torch.float32)


def linspace_schedule(steps: int, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' Euler "linspace" schedule: (timesteps [steps], sigmas [steps + 1] ending in 0),
    float32, computed with numpy exactly as the reference scheduler does."""
    if not 1 <= steps <= MAX_SCHEDULE_STEPS + 1:       # + 1: samplers that drop the penultimate sigma
        raise ValueError(f"steps must be from 1 to {MAX_SCHEDULE_STEPS}, got {steps}")
    count = len(table)
    timesteps = np.linspace(0, count - 1, steps, dtype=np.float32)[::-1].copy()
    sigmas = np.interp(timesteps, np.arange(0, count), table.cpu().numpy())
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return torch.from_numpy(timesteps), torch.from_numpy(sigmas)


class ReferenceNoise:
    """The random stream of the reference pipelines: one CPU generator seeded once draws the
    initial latent noise and then, in order, every ancestral step's noise. (ComfyUI instead seeds
    a fresh generator for the step noise, so its ancestral samples differ from the reference.)"""

    def __init__(self, seed: int):
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def draw(self, shape, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float32).to(device=device, dtype=dtype)
