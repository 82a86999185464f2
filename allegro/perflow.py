"""PeRFlow sampling (piecewise rectified flow, Yan et al. 2024) as the seed's `perflow` branch defines
it in its `PeRFlowScheduler` (rhymes-ai/Allegro, branch `perflow`, commit 4755ba5).

Time runs from t = 1 (pure noise) to t = 0 (clean) and is cut into `num_windows` equal windows
[1, 1 - 1/W), ..., [1/W, 0]. A PeRFlow model is trained so that inside each window the latent moves
on a straight line from the window's start to its end; sampling is plain Euler on that line's
velocity. What the model sees on each step:
  * its input latent is the sampling state itself (no input scaling; the start is unit noise),
  * its timestep is t * num_train_timesteps, an integer from the schedule (1000, 875, ... for 8 steps),
  * its output is read according to `prediction_type`:
      "velocity": the velocity itself;
      "diff_eps" / "ddim_eps": an epsilon-like output from which the window's end point is
      extrapolated, z_end = lambda_t * z + eta_t * output, and the velocity is
      (z_end - z) / (t_end - t). The two differ in lambda_s / eta_s at the window's start: "diff_eps"
      uses the DDPM ratio of the window's end and start signal levels, "ddim_eps" a DDIM step from the
      start to the end. lambda_t / eta_t move them from the window start (t_s) to the current time.
The signal levels alpha_bar come from the DDPM table of the model's training (Allegro's: linear betas
1e-4..2e-2, 1000 steps), looked up at index t * num_train_timesteps - 1 of each window edge.

All arithmetic follows the reference's order in float32, so given the same model outputs the
latents agree step for step (tests/library/test_perflow.py measures the spread).
"""
from dataclasses import dataclass

import numpy as np
import torch

from .schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, training_alphas_cumprod

PREDICTION_TYPES = ("diff_eps", "ddim_eps", "velocity")
# The windows and prediction type of the seed's README command for train_perflow.py (`--windows 4
# --pred_type diff_eps`); the scheduler class's own defaults (scaled-linear betas, "ddim_eps") are
# Stable Diffusion's and never used for Allegro: train_perflow.py builds it from Allegro's DDPM config.
DEFAULT_WINDOWS = 4
DEFAULT_PREDICTION = "diff_eps"
# A time within this fraction of a training step above a window's end still belongs to the next
# window (the reference's guard against rounding: 0.1 of a step).
WINDOW_TOLERANCE_STEPS = 0.1


@dataclass(frozen=True)
class PeRFlowConfig:
    num_windows: int = DEFAULT_WINDOWS
    prediction_type: str = DEFAULT_PREDICTION
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    beta_start: float = BETA_START
    beta_end: float = BETA_END

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"PeRFlow prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got "
                             f"{self.prediction_type!r}: use the one the model was trained with (--pred_type).")
        if not 1 <= self.num_windows <= self.num_train_timesteps:
            raise ValueError(f"PeRFlow num_windows must be from 1 to {self.num_train_timesteps}, got "
                             f"{self.num_windows}: use the model's training value (--windows, 4 in the seed's README).")


def window_edges(config: PeRFlowConfig) -> tuple[list[float], list[float]]:
    """(starts, ends) of the windows in time, first window first: W=4 gives [1, .75, .5, .25] and
    [.75, .5, .25, 0]. Python floats, computed as the reference does (i / W)."""
    starts = [i / config.num_windows for i in range(config.num_windows, 0, -1)]
    return starts, starts[1:] + [0.0]


def perflow_timesteps(steps: int, config: PeRFlowConfig) -> torch.Tensor:
    """The reference's timesteps [steps] int64, from num_train_timesteps down: the steps spread over
    the windows as evenly as possible (earlier windows take the remainder), evenly spaced inside each
    window from its start (included) to its end (excluded), times num_train_timesteps truncated."""
    windows = config.num_windows
    if steps < windows:
        # The reference quietly raises the count to the window count; say so instead.
        raise ValueError(f"PeRFlow needs at least one step per window: {steps} steps for {windows} windows. "
                         f"Use {windows} steps or more.")
    timesteps = truncated_times(steps, config)
    if repeats(timesteps):
        # Too many steps per window: truncation repeats a timestep (a zero-length step).
        fewer = next((n for n in range(steps - 1, windows - 1, -1) if not repeats(truncated_times(n, config))), None)
        advice = f"Use at most {fewer} steps." if fewer else "Use fewer windows."
        raise ValueError(f"{steps} PeRFlow steps over {windows} windows repeat timesteps (a window spans "
                         f"{config.num_train_timesteps / windows:g} training steps). {advice}")
    return torch.from_numpy(timesteps)


def truncated_times(steps: int, config: PeRFlowConfig) -> np.ndarray:
    """The reference's timesteps [steps] int64 without checks: each window's evenly spaced times
    (numpy float64, as the reference) times num_train_timesteps, truncated."""
    windows = config.num_windows
    starts, ends = window_edges(config)
    counts = [steps // windows + (1 if i < steps % windows else 0) for i in range(windows)]
    times = np.concatenate([np.linspace(start, end, num=count, endpoint=False)
                            for start, end, count in zip(starts, ends, counts)])
    return (times * config.num_train_timesteps).astype(np.int64)


def repeats(timesteps: np.ndarray) -> bool:
    return bool(np.any(np.diff(timesteps) >= 0))


class PeRFlow:
    """The step rule of one PeRFlow configuration. Timesteps are in training steps (t * 1000), as
    the model receives them: int64 from `perflow_timesteps`, or float32 with the same values."""

    def __init__(self, config: PeRFlowConfig = PeRFlowConfig()):
        self.config = config
        self.alphas_cumprod = training_alphas_cumprod(config.num_train_timesteps, config.beta_start,
                                                      config.beta_end)                     # [N] float32
        starts, ends = window_edges(config)
        self.window_starts = torch.tensor(starts, dtype=torch.float32)                    # [W]
        self.window_ends = torch.tensor(ends, dtype=torch.float32)                        # [W]

    def window(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t_start, t_end) float32 shaped like `t` (float32 time in [0, 1]): the window holding t. A
        time on a window's edge belongs to the window starting there."""
        tolerance = WINDOW_TOLERANCE_STEPS * (1.0 / self.config.num_train_timesteps)
        ends = self.window_ends.to(t.device)
        # Ends decrease, so the windows already passed are those whose end is at or above t.
        index = ((t - tolerance).unsqueeze(-1) <= ends).sum(-1).clamp(max=len(ends) - 1)
        return self.window_starts.to(t.device)[index], ends[index]

    def velocity(self, model_output: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """d sample / d t on the current window's straight line [B, C, T, H, W] from the model's output
        for `sample` (both [B, C, T, H, W]) at `timestep` (a scalar or one per batch item, [B])."""
        if self.config.prediction_type == "velocity":
            return model_output
        count = self.config.num_train_timesteps
        t = per_item((timestep.to(sample.device) / count).to(torch.float32), sample.ndim)  # [B, 1, 1, 1, 1] or []
        t_start, t_end = self.window(t)
        table = self.alphas_cumprod.to(sample.device)
        alpha_start = table[(t_start * count - 1).long()]
        alpha_end = table[torch.clamp((t_end * count - 1).long(), min=0)]
        if self.config.prediction_type == "diff_eps":
            gamma = (alpha_start / alpha_end) ** 0.5
            lambda_s = 1 / gamma
            eta_s = -1 * (1 - gamma ** 2) ** 0.5 / gamma
        else:                                                                  # "ddim_eps"
            lambda_s = (alpha_end / alpha_start) ** 0.5
            eta_s = (1 - alpha_end) ** 0.5 - (alpha_end / alpha_start * (1 - alpha_start)) ** 0.5
        since_start = t - t_start                                              # negative: time runs down
        denominator = lambda_s * since_start + (t_end - t)
        lambda_t = (lambda_s * (t_end - t_start)) / denominator
        eta_t = (eta_s * (t_end - t)) / denominator
        window_end = lambda_t * sample + eta_t * model_output
        return (window_end - sample) / (t_end - (t_start + since_start))

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor,
             next_timestep: torch.Tensor) -> torch.Tensor:
        """The sample at `next_timestep` [B, C, T, H, W]: one Euler step along the velocity."""
        dt = ((next_timestep - timestep) / self.config.num_train_timesteps).to(sample.device, sample.dtype)
        dt = per_item(dt, sample.ndim)
        return sample + dt * self.velocity(model_output, sample, timestep)

    def start_latent(self, latent: torch.Tensor, noise: torch.Tensor, timestep: float) -> torch.Tensor:
        """The state to start sampling from at `timestep`: unit noise at the very start (the reference's
        initial latent); elsewhere the training's noising of a window start, DDPM's
        sqrt(alpha_bar) * latent + sqrt(1 - alpha_bar) * noise at index timestep - 1."""
        if timestep >= self.config.num_train_timesteps:
            return noise
        alpha = self.signal_level(timestep)
        return alpha ** 0.5 * latent + (1 - alpha) ** 0.5 * noise

    def signal_level(self, timestep: float) -> float:
        """alpha_bar at `timestep` as start_latent uses it: 1 at 0 (clean), 0 at the start (noise)."""
        if timestep <= 0:
            return 1.0
        if timestep >= self.config.num_train_timesteps:
            return 0.0
        return float(self.alphas_cumprod[max(int(round(timestep)) - 1, 0)])


def per_item(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """A scalar stays a scalar; one value per batch item [B] becomes [B, 1, ...] to broadcast over a
    tensor of `ndim` dimensions."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim)) if values.ndim else values
