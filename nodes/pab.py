"""Allegro PAB: a model patch that reuses attention outputs over a few steps in the middle of the run
(Pyramid Attention Broadcast, allegro/pab.py). Off unless the node is in the graph; works with the Allegro
sampler and the stock KSampler alike, as the Allegro Step Cache does."""
from comfy_api.v0_0_2 import io

from ..allegro.pab import DEFAULT_TIMESTEPS, SkipRule
from ..allegro.schedule import NUM_TRAIN_TIMESTEPS
from ..adapters import checks
from ..adapters.caches import SamplerPAB
from .step_cache import CATEGORY

NODE = "Allegro PAB"
OPTION = "allegro_pab"
MAX_SKIP_RANGE = 16
LAST_TIMESTEP = NUM_TRAIN_TIMESTEPS        # the widgets' range: timesteps 0 .. 1000


class AllegroPAB(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        def skip_range(name, default, what):
            return io.Int.Input(name, default=default, min=1, max=MAX_SKIP_RANGE,
                                tooltip=f"Compute each {what} on every N-th step and reuse its output in between "
                                        "(inside the timestep range). 1 = off; 2 halves that attention's work there.")

        def timestep(name, default, edge):
            return io.Int.Input(name, default=default, min=0, max=LAST_TIMESTEP,
                                tooltip=f"Timestep (1000 = pure noise, 0 = clean) {edge} which every step computes "
                                        "all attentions: layout forms early, detail late.")
        return io.Schema(
            node_id="AllegroVideo_PAB",
            display_name=NODE,
            category=CATEGORY,
            description="Speeds sampling up by reusing attention outputs for a few steps in the middle of the run "
                        "(Pyramid Attention Broadcast, as diffusers applies it to Allegro). An approximation; it "
                        "keeps one attention output per block in memory. See bench/RESULTS.md for speed and PSNR.",
            inputs=[
                io.Model.Input("model", tooltip="The Allegro model."),
                skip_range("spatial_skip_range", 2, "self-attention (full 3-D)"),
                timestep("spatial_timestep_start", DEFAULT_TIMESTEPS[0], "at or below"),
                timestep("spatial_timestep_end", DEFAULT_TIMESTEPS[1], "at or above"),
                skip_range("cross_skip_range", 1, "caption cross-attention"),
                timestep("cross_timestep_start", DEFAULT_TIMESTEPS[0], "at or below"),
                timestep("cross_timestep_end", DEFAULT_TIMESTEPS[1], "at or above"),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with PAB; connect it to the sampler.")],
        )

    @classmethod
    def execute(cls, model, spatial_skip_range, spatial_timestep_start, spatial_timestep_end,
                cross_skip_range, cross_timestep_start, cross_timestep_end) -> io.NodeOutput:
        spatial = rule("spatial", spatial_skip_range, spatial_timestep_start, spatial_timestep_end)
        cross = rule("cross", cross_skip_range, cross_timestep_start, cross_timestep_end)
        pab = SamplerPAB(spatial, cross, model.get_model_object("model_sampling"))
        patched = model.clone()
        options = patched.model_options.setdefault("transformer_options", {})
        patched.model_options["transformer_options"] = {**options, OPTION: pab}
        return io.NodeOutput(patched)


def rule(kind: str, every, start, end) -> SkipRule:
    every = checks.whole_number(NODE, f"{kind}_skip_range", every, 1, MAX_SKIP_RANGE)
    start = checks.whole_number(NODE, f"{kind}_timestep_start", start, 0, LAST_TIMESTEP)
    end = checks.whole_number(NODE, f"{kind}_timestep_end", end, 0, LAST_TIMESTEP)
    if start > end:
        raise ValueError(f"'{NODE}' got {kind}_timestep_start = {start} above {kind}_timestep_end = {end}: the start "
                         "is the lower timestep (nearer the clean video). Swap the two values.")
    return SkipRule(every, (start, end))


