"""Allegro's training objective, as the seed's `train.py` / `train_ti2v.py` compute it.

One step: a timestep drawn uniformly from the 1000 DDPM steps, the clean latent noised with the
training schedule (allegro.schedule: betas linear 1e-4..2e-2) — the noise standard normal plus the
seed's offset noise (0.02 times one normal draw per sample and channel, `--noise_offset`) —, the DiT
predicts that noise (epsilon target), and the loss is the squared error averaged over the un-padded latent elements, each sample
weighted by min-SNR (Hang et al. 2023): min(SNR_t, gamma) / SNR_t with SNR_t = alpha_bar_t / (1 -
alpha_bar_t); gamma 5.0 in the seed, None for the plain mean. Captions are dropped (replaced by the
empty prompt's encoding) with probability 0.1, which keeps the unconditional branch CFG needs.

TI2V adds which video frames are given (0 in the frame mask) and the DiT's two extra inputs, the latent
of the video black except the given frames and the folded frame mask (`ti2v_condition`); the seed's mix is the first frame
(50 %), the first and last frames (40 %) and continuation — the first k frames, k uniform in 1..N —
(10 %); frames not in one of these get a random subset ("keyframes") in the seed's dataset code, with
weight 0 in its defaults. Pure PyTorch: no ComfyUI imports.
"""
import random

import torch

from .geometry import decoded_frames
from .schedule import NUM_TRAIN_TIMESTEPS, training_alphas_cumprod
from .ti2v import frame_mask

DEFAULT_SNR_GAMMA = 5.0          # train.py --snr_gamma
DEFAULT_NOISE_OFFSET = 0.02      # train.py / train_ti2v.py --noise_offset
DEFAULT_CAPTION_DROPOUT = 0.1    # train.py --cfg
# train_ti2v.py --i2v_ratio / --interp_ratio / --v2v_ratio; the rest of [0, 1) would be random keyframes.
SEED_MASK_MIX = {"first_frame": 0.5, "first_last": 0.4, "continuation": 0.1, "keyframes": 0.0}
MASK_KINDS = tuple(SEED_MASK_MIX)


def sample_timesteps(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[batch] integer timesteps uniform over 0..999 (the seed's torch.randint)."""
    return torch.randint(0, NUM_TRAIN_TIMESTEPS, (batch,), generator=generator)


def sample_noise(shape, offset: float = DEFAULT_NOISE_OFFSET, generator: torch.Generator | None = None) -> torch.Tensor:
    """The seed's training noise for a latent of `shape` [B, C, ...]: standard normal, plus `offset` times
    one standard normal draw per sample and channel (offset noise, drawn second; 0 or None: none)."""
    noise = torch.randn(shape, generator=generator)
    if offset:
        noise = noise + offset * torch.randn(tuple(shape[:2]) + (1,) * (len(shape) - 2), generator=generator)
    return noise


def add_noise(latent: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """DDPM forward process: sqrt(alpha_bar_t) * latent + sqrt(1 - alpha_bar_t) * noise, per sample.
    Coefficients in float32 (as the reference scheduler), the result in the latent's dtype."""
    alphas_cumprod = training_alphas_cumprod().to(latent.device)[timesteps.to(latent.device)]
    shape = (-1,) + (1,) * (latent.ndim - 1)
    signal = alphas_cumprod.sqrt().to(latent.dtype).reshape(shape)
    noise_scale = (1 - alphas_cumprod).sqrt().to(latent.dtype).reshape(shape)
    return signal * latent + noise_scale * noise


def snr(timesteps: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t / (1 - alpha_bar_t), float32 [batch]."""
    alphas_cumprod = training_alphas_cumprod()[timesteps.cpu()].to(timesteps.device)
    return alphas_cumprod / (1 - alphas_cumprod)


def min_snr_weights(timesteps: torch.Tensor, gamma: float | None) -> torch.Tensor | None:
    """Per-sample loss weights min(SNR, gamma) / SNR for an epsilon target; None when gamma is None."""
    if gamma is None:
        return None
    ratio = snr(timesteps)
    return torch.minimum(ratio, torch.full_like(ratio, gamma)) / ratio


def diffusion_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                   token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in float32. prediction/target [B, C, T, H, W]; weights [B] (min-SNR) or None;
    token_mask [B, T, H, W] with 1 on real latent elements, 0 on padding (None: all real). With a mask
    the sum runs over the real elements of every channel and is divided by their count."""
    batch, channels = prediction.shape[:2]
    loss = (prediction.float() - target.float()).square().reshape(batch, -1)
    if weights is not None:
        loss = loss * weights.to(loss.device, torch.float32).reshape(batch, 1)
    if token_mask is None or bool(token_mask.bool().all()):
        return loss.mean()
    mask = token_mask.float().unsqueeze(1).expand(batch, channels, *token_mask.shape[1:]).reshape(batch, -1)
    return (loss * mask).sum() / mask.sum()


def drop_caption(probability: float, rng: random.Random) -> bool:
    """True when this sample's caption is replaced by the empty prompt (the seed keeps it when random() > p)."""
    return rng.random() < probability


def given_frames(kind: str, num_frames: int, rng: random.Random) -> list[int]:
    """The video frames (0..num_frames-1) a TI2V training sample is given, by mask kind."""
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    if kind == "first_frame":
        return [0]
    if kind == "first_last":
        return sorted({0, num_frames - 1})
    if kind == "continuation":
        return list(range(rng.randint(1, num_frames)))
    if kind == "keyframes":
        return sorted(rng.sample(range(num_frames), rng.randint(0, num_frames - 1)))
    raise ValueError(f"unknown TI2V mask kind {kind!r}: use one of {', '.join(MASK_KINDS)}")


def ti2v_condition(frames: torch.Tensor, given: list[int], latent_size: tuple[int, int, int], encode) -> torch.Tensor:
    """The TI2V DiT's extra input for one clip, [1, 8, T', h, w]: the latent of the clip's video with every
    frame but `given` black (train_ti2v.py's `x * (mask < 0.5)`, encoded and scaled), then the frame mask
    (0 on given frames, folded to 4 channels x T' latent frames as its `mask.view`). frames: the clip
    [T, H, W, 3] in 0..255; latent_size: (T', h, w); encode({index: [3, H, W] in [-1, 1]}, num_frames,
    height, width) -> that video's latent in the DiT's units (the VAE's posterior mean, where the seed
    draws a sample)."""
    images = {index: frames[index].movedim(-1, 0).float() / 127.5 - 1 for index in given}
    height, width = frames.shape[1:3]
    masked = encode(images, decoded_frames(latent_size[0]), height, width)
    mask = frame_mask(given, tuple(latent_size), dtype=masked.dtype, device=masked.device)
    return torch.cat([masked, mask], dim=1)


def pick_mask_kind(mix: dict[str, float], rng: random.Random) -> str:
    """A mask kind drawn with the mix's weights (which need not sum to 1)."""
    kinds = [kind for kind, weight in mix.items() if weight > 0]
    if not kinds:
        raise ValueError("the TI2V mask mix gives no kind a weight above 0")
    return rng.choices(kinds, weights=[mix[kind] for kind in kinds])[0]
