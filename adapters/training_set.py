"""The Allegro training set in ComfyUI: a list of clips, each {"latent": the VAE latent [1, 4, T', h, w] as a
LATENT holds it, "frames": the clip's pixels [N, H, W, 3] uint8 (TI2V training encodes its masked videos from
them), "caption": (T5 hidden states [1, L, D], attention mask [1, L])}. Made by 'Allegro Training Clip' and
'Allegro Training Dataset', read by 'Allegro Train LoRA'."""
import torch

from ..allegro.config import TEMPORAL_FACTOR
from ..allegro.quoting import quote


def is_clip(entry) -> bool:
    """An entry as make_clip (or 'Allegro Training Dataset') makes it."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(key), torch.Tensor) for key in ("latent", "frames")):
        return False
    caption = entry.get("caption")
    return (entry["latent"].ndim == 5 and entry["frames"].ndim == 4 and entry["frames"].dtype == torch.uint8
            and isinstance(caption, tuple) and len(caption) == 2 and all(isinstance(t, torch.Tensor) for t in caption))


def described(value) -> str:
    """What a wrongly linked value is, in a few words (tensors by shape, not by their numbers)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, dict) and isinstance(value.get("samples"), torch.Tensor):
        return f"a LATENT of shape {list(value['samples'].shape)}"
    return f"{type(value).__name__} {quote(value)}"


def checked_set(node: str, name: str, value) -> list:
    """`value` if it is a training set (a list of clips); else ValueError saying what was linked instead.
    A custom type is not checked by ComfyUI when another node's "any" output is linked to it."""
    if isinstance(value, list) and all(is_clip(entry) for entry in value):
        return value
    got = described(value)
    raise ValueError(f"'{node}' got {got} as '{name}', not a training set: connect the training_set output of "
                     f"'Allegro Training Clip' or 'Allegro Training Dataset' to it.")


def caption_of(conditioning, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states [1, L, D], mask [1, L]) of an 'Allegro Text Encode' conditioning."""
    if not conditioning:
        raise ValueError(f"'{name}' holds no conditioning: connect the positive output of 'Allegro Text Encode'.")
    states, extras = conditioning[0][0], conditioning[0][1]
    mask = extras.get("attention_mask")
    if mask is None:
        raise ValueError(f"'{name}' has no T5 attention mask, which Allegro trains with: encode the caption with "
                         "'Allegro Text Encode'.")
    return states[:1], mask[:1]


def check_clip_shape(count: int, height: int, width: int, vae) -> None:
    """The frame count and size a training clip must have (the VAE's and the DiT's strides)."""
    if count % TEMPORAL_FACTOR:
        fix = (f"trim it to {count - count % TEMPORAL_FACTOR} frames" if count > TEMPORAL_FACTOR else
               f"give it at least {TEMPORAL_FACTOR} frames (an IMAGE batch of the clip's frames, not one image)")
        raise ValueError(f"The clip has {count} frames; Allegro's VAE groups {TEMPORAL_FACTOR} frames into one latent "
                         f"frame, so training clips need a multiple of {TEMPORAL_FACTOR} (88 as trained): {fix}.")
    factor = vae.config.spatial_factor * 2          # VAE downscale x the DiT's 2x2 patches
    if height % factor or width % factor:
        raise ValueError(f"The clip is {width}x{height}; width and height must be multiples of {factor} (VAE {factor // 2}"
                         f" x 2x2 patches): resize or crop it first (e.g. with 'Upscale Image').")


def make_clip(frames: torch.Tensor, caption, vae) -> dict:
    """A training-set entry from an IMAGE batch [N, H, W, C] in 0..1 and a conditioning."""
    if frames.ndim != 4 or frames.shape[0] < 1:
        raise ValueError(f"'frames' must be an IMAGE batch [frames, height, width, channels], got {list(frames.shape)}")
    check_clip_shape(*frames.shape[:3], vae)
    pixels = frames[..., :3].float()
    if pixels.shape[-1] == 1:                       # grey: the VAE takes RGB
        pixels = pixels.expand(*pixels.shape[:-1], 3)
    latent = vae.encode(pixels)
    frames = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return {"latent": latent.cpu(), "frames": frames.cpu(), "caption": caption}
