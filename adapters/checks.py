"""Numbers checked where they enter a node, and tensors checked where they leave one.

ComfyUI checks a widget's min/max only for values typed into the widget, and `NaN < min` is false,
so NaN from the API passes its check; a linked input (from any node) is not checked at all. Each
node therefore checks its own numbers first. A sampled latent or decoded video with NaN or infinity
is stopped where it is made, with the input that most likely caused it.
"""
import math

import torch

from ..allegro.quoting import quote
from ..allegro.tensor_checks import all_finite, non_finite_count


def finite_number(node: str, name: str, value, low: float | None = None, high: float | None = None) -> float:
    """`value` as a float if it is a finite number within [low, high]; else ValueError naming the input."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (low is None or value >= low) and (high is None or value <= high):
        return float(value)
    bounds = (f" from {low:g} to {high:g}" if low is not None and high is not None else
              f" of at least {low:g}" if low is not None else f" of at most {high:g}" if high is not None else "")
    raise ValueError(f"'{node}' got {name} = {quote(value)}: it must be a finite number{bounds} (NaN and infinity "
                     "are not). Set it in the node, or fix the node that feeds it.")


def whole_number(node: str, name: str, value, low: int | None = None, high: int | None = None) -> int:
    """`value` if it is an int within [low, high] (a float with a whole value is accepted); else ValueError."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and (low is None or value >= low) and (high is None or value <= high):
        return value
    bounds = (f" from {low} to {high}" if low is not None and high is not None else
              f" of at least {low}" if low is not None else f" of at most {high}" if high is not None else "")
    raise ValueError(f"'{node}' got {name} = {quote(value)}: it must be a whole number{bounds}. Set it in the node, "
                     "or fix the node that feeds it.")


def choice(node: str, name: str, value, options) -> str:
    """`value` if it is one of a list widget's `options`: ComfyUI checks a list only for values typed into
    it, so a value linked from another node ("any" outputs) arrives unchecked."""
    if isinstance(value, str) and value in options:
        return value
    shown = ", ".join(list(options)[:12]) + (f", … ({len(options)} in all)" if len(options) > 12 else "")
    raise ValueError(f"'{node}' got {name} = {quote(value)}: it must be one of {shown}. Pick it in the node, or fix "
                     "the node that feeds it.")


IMAGE_SHAPE = "[images, height, width, channels]"
IMAGE_CHANNELS = (1, 3, 4)          # grey, RGB, RGBA: what ComfyUI's image nodes make


def image(node: str, name: str, value, what: str = "an IMAGE") -> torch.Tensor:
    """`value` if it is an IMAGE batch [images, height, width, channels] with at least one image of at
    least one pixel, in grey, RGB or RGBA; else ValueError naming the input and the shape it had."""
    if not isinstance(value, torch.Tensor) or value.ndim != 4 or not value.is_floating_point():
        got = (f"a {value.dtype} tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else
               f"{type(value).__name__} {quote(value)}")
        raise ValueError(f"'{node}' needs {what} {IMAGE_SHAPE} (floats 0..1) as '{name}'; got {got}. Connect an "
                         "IMAGE output (Load Image, a VAE decode) to it.")
    empty = [f"{axis} 0" for axis, size in zip(("images", "height", "width"), value.shape) if size == 0]
    if empty:
        raise ValueError(f"'{node}' got an empty IMAGE as '{name}' (shape {list(value.shape)}: {', '.join(empty)}): "
                         "there is nothing to use. Check the node that made it (a crop, resize or batch selection "
                         "that left no pixels or no images).")
    if value.shape[-1] not in IMAGE_CHANNELS:
        raise ValueError(f"'{node}' got an IMAGE with {value.shape[-1]} channels as '{name}' (shape "
                         f"{list(value.shape)}); images have 1 (grey), 3 (RGB) or 4 (RGBA) channels.")
    return value


def is_finite(tensor) -> bool:
    return not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or all_finite(tensor)


def count_non_finite(tensor: torch.Tensor) -> str:
    return f"{non_finite_count(tensor)} NaN or infinite values (of {tensor.numel()})"


# A sampled or encoded Allegro latent stays within a few units; far larger values came from elsewhere.
PLAUSIBLE_LATENT = 1e3


def implausible_values(tensor: torch.Tensor) -> str | None:
    """'its values reach …' when a finite tensor holds values no sampler or VAE makes, else None."""
    largest = float(tensor.detach().abs().max()) if tensor.numel() else 0.0
    return f"its values reach {largest:.3g}, far beyond a sampled latent's few units" if largest > PLAUSIBLE_LATENT else None
