"""Allegro Step Cache: a model patch that skips the DiT's blocks on steps whose input barely moved
since the last full step (TeaCache's criterion), reusing that step's block output. Off unless the
node is in the graph; works with the Allegro sampler and the stock KSampler alike."""
from comfy_api.v0_0_2 import io

from ..adapters import checks
from ..adapters.caches import SamplerStepCache

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


