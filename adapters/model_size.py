"""The video size a loaded DiT was trained at (its config's sample sizes; the published variants
by name, allegro.config.KNOWN_VARIANTS): reported when the model loads, and a warning when a
latent of another size is sampled — the 40-frame 368x640 model at the default 88x720x1280, say."""
import logging

from ..allegro.config import SPATIAL_FACTOR, TransformerConfig, known_variant, trained_size
from ..allegro.geometry import decoded_frames

_warned: set[tuple] = set()


def describe(config: TransformerConfig) -> str:
    frames, height, width = trained_size(config)
    variant = known_variant(config)
    name = variant.repo if variant else f"an Allegro{'-TI2V' if config.ti2v else ''} DiT"
    scales = (config.interpolation_scale_t, config.interpolation_scale_h, config.interpolation_scale_w)
    return (f"{name}, trained at {width}x{height} with {frames} frames (RoPE scales t/h/w "
            f"{'/'.join(f'{s:g}' for s in scales)})")


def report_loaded(config: TransformerConfig) -> str:
    """Log what was loaded and the size to make videos at; returns the message."""
    frames, height, width = trained_size(config)
    message = (f"Loaded {describe(config)}. Make videos at width {width}, height {height}, length {frames} "
               "(the latent / TI2V node's size) for the results it was trained for.")
    logging.info(message)
    return message


def warn_if_untrained_size(config: TransformerConfig, latent_shape) -> str | None:
    """Warn (once per model size and latent size) when a latent [B, C, T', h, w] is not the trained size."""
    frames, height, width = trained_size(config)
    latent_frames, rows, cols = latent_shape[-3:]
    wanted = (frames, height, width)
    got = (decoded_frames(latent_frames), rows * SPATIAL_FACTOR, cols * SPATIAL_FACTOR)
    if got == wanted or (wanted, got) in _warned:
        return None
    _warned.add((wanted, got))
    message = (f"Sampling {got[2]}x{got[1]} with {got[0]} frames ({latent_frames} latent frames) on "
               f"{describe(config)}. Other sizes work but "
               f"look best near the trained one: set the latent / TI2V node to width {width}, height {height}, "
               f"length {frames}.")
    logging.warning(message)
    return message
