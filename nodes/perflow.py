"""Allegro PeRFlow Sampler: the seed's PeRFlow sampling (allegro/perflow.py) as a ComfyUI SAMPLER
plus the SIGMAS of its timesteps, for SamplerCustomAdvanced / SamplerCustom (how PeRFlow time maps onto
ComfyUI's sigmas: adapters/perflow.py)."""
import torch
from comfy_api.v0_0_2 import io

from ..allegro.perflow import DEFAULT_PREDICTION, DEFAULT_WINDOWS, PREDICTION_TYPES, PeRFlowConfig, perflow_timesteps
from ..allegro.schedule import NUM_TRAIN_TIMESTEPS
from ..adapters import checks
from ..adapters.perflow import NODE, PeRFlowSampler

CATEGORY = "Allegro/sampling"
DEFAULT_STEPS = 8          # two per window: the few-step use PeRFlow is for (the seed gives no count)


class AllegroPeRFlowSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_PeRFlowSampler",
            display_name=NODE,
            category=CATEGORY,
            description="Few-step sampling for an Allegro model fine-tuned with PeRFlow (piecewise rectified flow, "
                        "the seed's perflow branch). Connect both outputs to SamplerCustomAdvanced (or SamplerCustom). "
                        "No PeRFlow checkpoint of Allegro is published: on the released weights the result is not "
                        "meaningful.",
            inputs=[
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=NUM_TRAIN_TIMESTEPS,
                             tooltip="Model calls per CFG branch, spread evenly over the windows (at least one per "
                                     "window)."),
                io.Int.Input("windows", default=DEFAULT_WINDOWS, min=1, max=NUM_TRAIN_TIMESTEPS,
                             tooltip="Time windows the model was trained with (train_perflow.py --windows; 4 in the "
                                     "seed's README)."),
                io.Combo.Input("prediction_type", options=list(PREDICTION_TYPES), default=DEFAULT_PREDICTION,
                               tooltip="What the model was trained to predict (train_perflow.py --pred_type; diff_eps "
                                       "in the seed's README)."),
            ],
            outputs=[
                io.Sampler.Output(display_name="sampler", tooltip="PeRFlow's Euler steps; connect to "
                                                                  "SamplerCustomAdvanced's sampler."),
                io.Sigmas.Output(display_name="sigmas", tooltip="PeRFlow's timesteps (1000 … 0, t × 1000), not "
                                                                "diffusion sigmas; connect to the sigmas input."),
            ],
        )

    @classmethod
    def execute(cls, steps, windows, prediction_type) -> io.NodeOutput:
        steps = checks.whole_number(NODE, "steps", steps, 1, NUM_TRAIN_TIMESTEPS)
        windows = checks.whole_number(NODE, "windows", windows, 1, NUM_TRAIN_TIMESTEPS)
        prediction_type = checks.choice(NODE, "prediction_type", prediction_type, list(PREDICTION_TYPES))
        config = PeRFlowConfig(num_windows=windows, prediction_type=prediction_type)
        timesteps = perflow_timesteps(steps, config).to(torch.float32)
        sigmas = torch.cat([timesteps, timesteps.new_zeros(1)])
        return io.NodeOutput(PeRFlowSampler(config), sigmas)
