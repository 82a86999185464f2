"""The step cache and PAB in ComfyUI: where a DiT call stands in its sampling run, read from the call's
transformer_options (the CFG batch layout, the sampler's sigmas)."""
from ..allegro.dit_wrappers import BlocksInput
from ..allegro.step_cache import StepCache


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
