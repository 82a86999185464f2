"""Multi-GPU sampling in ComfyUI (the node is nodes/parallel.py): CFG parallel and Ulysses sequence parallel
(allegro/parallel.py) for the Allegro sampler and the stock samplers alike.

A multi-GPU MODEL carries a ParallelRoute in its transformer_options, a wrapper of the DiT's blocks stage
(allegro/dit_wrappers.py) that runs them on the rank group. ComfyUI's process is rank 0 on ComfyUI's own device;
the package owns one worker process per other device (allegro/parallel_pool.py), started at the first step that
needs them, kept warm with the model loaded until another layout is asked for or the server stops. A worker
dying is an error for that run only; the next run starts anew."""
import atexit
import contextlib
import functools
import threading
import uuid

import torch

import comfy.model_management
import comfy.ops

from ..allegro.devices import parse_device
from ..allegro.parallel import Cancelled, ParallelLayout
from ..allegro.dit_wrappers import BlocksInput
from ..allegro.parallel_pool import OnRankGroup, RankGroup
from ..allegro.parallel_weights import Computed
from ..allegro.quantization import QuantizedWeight
from ..allegro.quantized_layers import stored_weights

OPTION = "allegro_parallel"
_lock = threading.Lock()
_group: RankGroup | None = None           # the process's one rank group (torch.distributed allows one)


class ParallelRoute(OnRankGroup):
    """What a multi-GPU MODEL carries in transformer_options: the rank layout, the workers' devices (as the
    user wrote them), and the ComfyUI model whose weights the workers mirror. The process's rank group is
    started (or found) at the first call that needs it."""

    def __init__(self, layout: ParallelLayout, devices: str, base_model):
        super().__init__(should_stop=comfy.model_management.processing_interrupted)
        self.layout, self.devices = layout, devices
        self.base_model = base_model

    def __deepcopy__(self, memo):           # ComfyUI 0.3.75 / 0.8.0 deep-copy model_options on every clone
        return self

    def wrap_blocks(self, run, call: BlocksInput):
        diffusion_model = call.model
        with _lock:
            self.group = rank_group(self.layout, worker_devices(self.devices, call.tokens.device, self.layout.world))
            key = self.weights_key(call.tokens.dtype)
            try:
                with cancel_at_block_boundaries():
                    if key is None or key != self.group.loaded_key:
                        self.group.load(diffusion_model.config, sent_weights(diffusion_model, call.tokens.dtype,
                                                                             call.tokens.device),
                                        key, call.tokens.dtype, transform=patched_weight(diffusion_model))
                    return super().wrap_blocks(run, call)
            except Cancelled:
                comfy.model_management.throw_exception_if_processing_interrupted()
                raise comfy.model_management.InterruptProcessingException()

    def weights_key(self, dtype):
        """Names the weights rank 0 computes with now: ComfyUI records on the model which patch set (LoRA…)
        its weights carry; a new one, another model or another dtype makes the workers reload."""
        model = self.base_model
        if not hasattr(model, "allegro_parallel_id"):
            model.allegro_parallel_id = uuid.uuid4().hex
        patches = getattr(model, "current_weight_patches_uuid", None)
        if patches is None:
            return None                       # unknown: send the weights again
        return model.allegro_parallel_id, str(patches), str(dtype)


@contextlib.contextmanager
def cancel_at_block_boundaries():
    """Newer ComfyUI (0.8.0 on) checks for Cancel in every layer call (comfy.ops.run_every_op). Rank 0 leaving
    a block half-way would leave the other ranks waiting in its collectives, so while the group runs the
    blocks, Cancel is taken before each block, by every rank together (allegro.parallel.StopSignal)."""
    check = getattr(comfy.ops, "run_every_op", None)
    if check is None:
        yield
        return
    comfy.ops.run_every_op = _no_check
    try:
        yield
    finally:
        comfy.ops.run_every_op = check


def _no_check():
    pass


def sent_weights(diffusion_model, dtype, device) -> list:
    """The DiT's weights for the workers, as rank 0 stores them (quantised layers' weights quantised), except a
    quantised layer carrying patches (LoRA…: adapters/quantized_ops applies them to the dequantised weight), whose
    weight goes as rank 0 computes it, dequantised and patched, made one layer at a time while sending."""
    layers = dict(diffusion_model.named_modules())
    weights = []
    for name, value in stored_weights(diffusion_model):
        layer = layers.get(name.rpartition(".")[0])
        if isinstance(value, QuantizedWeight) and (layer.lora_patches is not None or layer.weight_function):
            value = Computed(tuple(value.shape), dtype, functools.partial(layer.dequantized_weight, dtype, device))
        weights.append((name, value))
    return weights


def patched_weight(diffusion_model):
    """ComfyUI applies LoRA and similar patches of weights it leaves offloaded (low VRAM) at compute time,
    through the layer's weight_function / bias_function: apply them to what the workers get."""
    modules = dict(diffusion_model.named_modules())

    def transform(name, tensor):
        module_name, _, kind = name.rpartition(".")
        for function in getattr(modules.get(module_name), f"{kind}_function", None) or []:
            tensor = function(tensor)
        return tensor
    return transform


def worker_devices(spec: str, rank0: torch.device, world: int) -> list[str]:
    """Every rank's device, rank 0's (ComfyUI's) first. `spec`: the other ranks' devices, comma-separated, or
    empty for the next GPUs after ComfyUI's (CPU processes when ComfyUI runs on the CPU)."""
    wanted = world - 1
    if spec.strip():
        others = [str(parse_device(part, "Allegro Multi-GPU: 'devices' names")) for part in spec.split(",")
                  if part.strip()]
        if len(others) != wanted:
            raise ValueError(f"Allegro Multi-GPU: 'devices' lists {len(others)} device(s) but {world} GPUs need "
                             f"{wanted} besides ComfyUI's {rank0}; list exactly {wanted} (e.g. "
                             f"{', '.join(f'cuda:{i + 1}' for i in range(wanted))}) or leave it empty.")
        cuda = [d for d in others if d.startswith("cuda")]
        if str(rank0) in cuda or len(set(cuda)) != len(cuda):
            raise ValueError(f"Allegro Multi-GPU: every rank needs its own GPU; 'devices' ({spec}) repeats one or "
                             f"names ComfyUI's own {rank0}.")
    elif rank0.type == "cpu":
        others = ["cpu"] * wanted
    elif rank0.type == "cuda":
        others = [f"cuda:{i}" for i in range(torch.cuda.device_count()) if i != rank0.index][:wanted]
        if len(others) < wanted:
            raise ValueError(f"Allegro Multi-GPU: {world} GPUs asked for, but this machine shows "
                             f"{torch.cuda.device_count()} CUDA device(s). Lower 'gpus'.")
    else:
        raise ValueError(f"Allegro Multi-GPU runs on CUDA GPUs (NCCL) or CPU processes (gloo), not on {rank0.type}.")
    return [str(rank0)] + others


def rank_group(layout: ParallelLayout, devices: list[str]) -> RankGroup:
    """The process's rank group for this layout and these devices: kept while they stay the same and its
    workers live; otherwise the old one is shut down and a new one started."""
    global _group
    if _group is not None:
        alive = _group.alive()          # a worker killed a moment ago counts as dead (see RankGroup.alive)
        if not alive or _group.layout != layout or _group.devices != devices:
            _group.close(kill=not alive)
            _group = None
    if _group is None:
        group = RankGroup(layout, devices)
        group.start()
        _group = group
    return _group


def shutdown():
    """Stop the worker processes (also done at interpreter exit, when a run may still hold the lock: then
    they are killed rather than waited for)."""
    global _group
    free = _lock.acquire(timeout=5)
    try:
        if _group is not None:
            _group.close(kill=not free)
            _group = None
    finally:
        if free:
            _lock.release()


atexit.register(shutdown)


def layout_for(gpus: int, cfg_parallel: bool, heads: int) -> ParallelLayout:
    if cfg_parallel and gpus % 2:
        raise ValueError(f"Allegro Multi-GPU: CFG parallel puts the conditional and unconditional halves on two equal "
                         f"groups of GPUs, so it needs an even count, not {gpus}. Use {gpus - 1 or 2} or {gpus + 1} "
                         "GPUs, or turn cfg_parallel off (sequence parallel only).")
    cfg = 2 if cfg_parallel else 1
    return ParallelLayout(cfg, gpus // cfg).check(heads)


def with_multi_gpu(model, layout: ParallelLayout | None, devices: str):
    """A clone of the MODEL `model` sampled on the rank group of `layout` (None: on ComfyUI's device alone, undoing
    an earlier Multi-GPU node); `devices` names the other ranks' devices (empty: the next GPUs)."""
    patched = model.clone()
    options = dict(patched.model_options.get("transformer_options", {}))
    options.pop(OPTION, None)
    if layout is not None:
        options[OPTION] = ParallelRoute(layout, devices, model.model)
    patched.model_options["transformer_options"] = options
    return patched
