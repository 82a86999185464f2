"""Allegro Multi-GPU: one video sampled on several GPUs at once (CFG parallel and Ulysses sequence
parallel, allegro/parallel.py), for the Allegro sampler and the stock samplers alike. The node only marks a
clone of the MODEL; adapters/parallel.py runs the rank group."""
import torch
from comfy_api.v0_0_2 import io

from ..allegro.quoting import quote
from ..adapters import checks
from ..adapters.parallel import layout_for, with_multi_gpu, worker_devices

CATEGORY = "Allegro/sampling"
MAX_GPUS = 16


class AllegroMultiGPU(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_MultiGPU",
            display_name="Allegro Multi-GPU",
            category=CATEGORY,
            description="Samples one video on several GPUs at once: the conditional and unconditional halves of CFG on "
                        "two groups of GPUs, and inside a group the video's tokens split across GPUs (Ulysses sequence "
                        "parallel). Same result as one GPU. ComfyUI's GPU is the first; the package starts one worker "
                        "process per other GPU on first use and keeps it (and the model) until the server stops.",
            inputs=[
                io.Model.Input("model", tooltip="The Allegro model (T2V or TI2V) from 'Load Allegro Model'."),
                io.Int.Input("gpus", default=2, min=1, max=MAX_GPUS,
                             tooltip="GPUs that work on each step, ComfyUI's own included. 1 = off. The released "
                                     "model's 24 heads split over 2, 3, 4, 6 or 8 GPUs per group. On a --cpu "
                                     "ComfyUI these are CPU processes."),
                io.Boolean.Input("cfg_parallel", default=True,
                                 tooltip="Put the conditional and unconditional halves of each step on two groups of "
                                         "gpus/2 (needs an even count). Off: all GPUs split the tokens of both."),
                io.String.Input("devices", default="",
                                tooltip="The other GPUs, comma-separated (e.g. cuda:1,cuda:2,cuda:3). Empty: the "
                                        "next ones after ComfyUI's."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model, sampled on the GPU group; connect it "
                                                                   "to the sampler (Allegro or KSampler).")],
        )

    @classmethod
    def execute(cls, model, gpus, cfg_parallel, devices) -> io.NodeOutput:
        gpus = checks.whole_number("Allegro Multi-GPU", "gpus", gpus, 1, MAX_GPUS)
        if not isinstance(devices, str):
            raise ValueError(f"Allegro Multi-GPU: 'devices' must be text, got {type(devices).__name__} {quote(devices)}.")
        diffusion_model = getattr(model.model, "diffusion_model", None)
        config = getattr(diffusion_model, "config", None)
        if not hasattr(config, "num_attention_heads") or not hasattr(diffusion_model, "run_blocks"):
            raise ValueError("Allegro Multi-GPU takes an Allegro MODEL: connect 'Load Allegro Model' to it.")
        layout = layout_for(gpus, cfg_parallel, config.num_attention_heads) if gpus > 1 else None
        if layout is not None:
            worker_devices(devices, torch.device(model.load_device), layout.world)     # refuse bad devices now
        return io.NodeOutput(with_multi_gpu(model, layout, devices))
