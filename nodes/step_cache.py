"""Allegro Step Cache: a model patch that skips the DiT's blocks on steps whose input barely moved
since the last full step (TeaCache's criterion), reusing that step's block output. Off unless the
node is in the graph; works with the Allegro sampler and the stock KSampler alike."""
from comfy_api.v0_0_2 import io

from ..allegro.dit_wrappers import BlocksInput
from ..allegro.step_cache import StepCache
from . import checks

CATEGORY = "Allegro/sampling"
OPTION = "allegro_step_cache"


class AllegroStepCache(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AllegroVideo_StepCache",
            display_name="Allegro Step Cache",
            category=CATEGORY,
            description="Speeds sampling up by skipping the transformer on steps where its input has changed little "
                        "(TeaCache-style). An approximation: higher thresholds skip more steps and change the video "
                        "more. 0 disables it. See bench/RESULTS.md for measured speed-ups and PSNR.",
            inputs=[
                io.Model.Input("model", tooltip="The Allegro model."),
                io.Float.Input("threshold", default=0.1, min=0.0, max=2.0, step=0.01,
                               tooltip="Summed relative change of the first block's input that forces a full step. "
                                       "0 = never skip; 0.05-0.15 skips some steps; more skips more."),
                io.Float.Input("start", default=0.1, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the run before which every step is computed (layout forms early)."),
                io.Float.Input("end", default=0.9, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the run after which every step is computed (fine detail forms "
                                       "late)."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The model with step caching; connect it to the "
                                                                   "sampler.")],
        )

    @classmethod
    def execute(cls, model, threshold, start, end) -> io.NodeOutput:
        node = "Allegro Step Cache"
        threshold = checks.finite_number(node, "threshold", threshold, 0.0)
        start, end = (checks.finite_number(node, name, value, 0.0, 1.0) for name, value in (("start", start), ("end", end)))
        cache = SamplerStepCache(threshold, start, min(max(start, end), 1.0))
        patched = model.clone()
        options = patched.model_options.setdefault("transformer_options", {})
        patched.model_options["transformer_options"] = {**options, OPTION: cache}
        return io.NodeOutput(patched)


class SamplerStepCache(StepCache):
    """The step cache in ComfyUI: the stream is the CFG batch layout (cond_or_uncond), the progress the
    step's place among the sampler's sigmas; the first step of a run starts afresh."""

    def position(self, call: BlocksInput) -> tuple:
        options = call.options or {}
        sigmas, sigma = options.get("sample_sigmas"), options.get("sigmas")
        progress = 0.0
        if sigmas is not None and sigma is not None and len(sigmas) > 1:
            current = float(sigma.flatten()[0])
            steps = [float(s) for s in sigmas[:-1]]
            index = min(range(len(steps)), key=lambda i: abs(steps[i] - current))
            if index == 0:
                self.reset()          # a new sampling run starts
            progress = index / max(1, len(steps) - 1)
        return cfg_stream(options), progress


def cfg_stream(options: dict) -> tuple:
    """Which CFG batch layout a call is (e.g. (0, 1): cond and uncond together): each keeps its own cache."""
    return tuple(options.get("cond_or_uncond", ()))
