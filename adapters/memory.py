"""Refuse sizes that cannot fit in the memory actually available, with numbers, before allocating.

Two things grow with the video: the decoded frames (float32 IMAGE in RAM; decoding holds about
DECODE_COPIES of them at its peak: the blended video, its 0..1 version and the IMAGE layout) and
the DiT's activations, which grow with its token count (frames/4 x height/16 x width/16) times the
CFG batch. "Available" is free RAM for the frames and for a CPU DiT; on a GPU it is free VRAM plus
what ComfyUI can free there by unloading the models it holds (it does so before sampling).
"""
import psutil

import comfy.ldm.modules.attention
import comfy.model_management

from ..allegro.geometry import VideoSize
from ..allegro.quoting import quote

GIB = 1024 ** 3
DECODE_COPIES = 3
# Activations per latent element, as ComfyUI estimates them for attention that never stores the
# attention matrix (SDPA flash / memory-efficient, xformers, sage, flash; chunked split and sub-quad):
# MiB per 100 latent elements x the model's memory_usage_factor (0.45 for Allegro), as BaseModel does.
MIB = 1024 ** 2


def available_ram() -> int:
    return psutil.virtual_memory().available


def available_on(device) -> tuple[int, str]:
    """(bytes a new allocation on `device` can use, how that was counted)."""
    if device is None or getattr(device, "type", "cpu") in ("cpu", "mps"):
        return available_ram(), "of RAM are free"
    free = comfy.model_management.get_free_memory(device)
    held = sum(loaded.model_loaded_memory() for loaded in list(comfy.model_management.current_loaded_models)
               if getattr(loaded, "device", None) == device)
    return free + held, f"of {device} memory are free or held by models ComfyUI can unload"


def check_fits_in_memory(size: VideoSize, batch: int = 1):
    """The decoded frames (float32 IMAGE, DECODE_COPIES at the decode's peak) must fit in free RAM."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1, got {quote(batch)}.")
    frames = size.decoded_bytes(batch)
    needed, available = DECODE_COPIES * frames, available_ram()
    if needed > available:
        raise ValueError(
            f"{batch} x {size.frames} frames of {size.width}x{size.height} would need about {needed / GIB:.1f} GiB of "
            f"RAM when decoded (the frames are {frames / GIB:.1f} GiB as float32 and decoding holds {DECODE_COPIES} "
            f"copies at its peak); {available / GIB:.1f} GiB of RAM are free. Lower the length, the size or the batch "
            "(1280x720x88 needs about 2.7 GiB), or free memory.")


def attention_matrix_bytes(tokens: int, heads: int, batch: int) -> int:
    """Extra bytes of the attention backend in use: attention_basic stores every head's full
    tokens x tokens matrix (in float32); the others never store it."""
    if comfy.ldm.modules.attention.optimized_attention is comfy.ldm.modules.attention.attention_basic:
        return batch * heads * tokens * tokens * 4
    return 0


def check_sampling_fits(model, latent_shape, cfg: float):
    """The DiT's activations for this latent must fit in what is available on its device."""
    base = getattr(model, "model", None)
    config = getattr(getattr(base, "model_config", None), "unet_config", {}).get("allegro")
    if config is None:
        return
    batch, _, frames, height, width = latent_shape
    cfg_batch = batch * (1 if cfg == 1.0 else 2)                      # ComfyUI skips the negative at cfg 1
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    elements = cfg_batch * frames * height * width
    activations = elements * comfy.model_management.dtype_size(dtype) * 0.01 * base.memory_usage_factor * MIB
    tokens = frames * (height // config.patch_size) * (width // config.patch_size)
    needed = activations + attention_matrix_bytes(tokens, config.num_attention_heads, cfg_batch)
    available, counted = available_on(model.load_device)
    if needed > available:
        raise ValueError(
            f"Sampling {batch} x {frames * 4} frames of {width * 8}x{height * 8} is {tokens} tokens per video for the "
            f"DiT; its activations ({cfg_batch} pass{'es' if cfg_batch > 1 else ''} per step"
            f"{' with CFG' if cfg != 1.0 else ''}, {str(dtype).replace('torch.', '')}) need about {needed / GIB:.1f} GiB, "
            f"and {available / GIB:.1f} GiB {counted}. Lower the length or the size (88x720x1280 is 79,200 tokens), "
            "sample one video at a time, or set cfg to 1 to halve it.")
