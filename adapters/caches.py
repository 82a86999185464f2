"""The step cache and PAB in ComfyUI (the nodes are nodes/step_cache.py and nodes/pab.py): where a DiT call
stands in its sampling run, read from the call's transformer_options (the CFG batch layout, the sampler's
sigmas), and a new sampling run starting afresh."""
from ..allegro.dit_wrappers import BlocksInput
from ..allegro.pab import PyramidAttentionBroadcast, SkipRule
from ..allegro.schedule import NUM_TRAIN_TIMESTEPS
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


class SamplerPAB(PyramidAttentionBroadcast):
    """PAB in ComfyUI: the stream is the CFG batch layout (cond_or_uncond), the timestep the model's for the
    call's sigma (through the MODEL's model_sampling); a new sampling run starts afresh."""

    def __init__(self, spatial: SkipRule, cross: SkipRule, model_sampling):
        super().__init__(spatial, cross)
        self.model_sampling = model_sampling
        self.run_sigmas = None

    def position(self, call: BlocksInput) -> tuple:
        options = call.options or {}
        sigmas, sigma = options.get("sample_sigmas"), options.get("sigmas")
        if sigmas is not None and sigmas is not self.run_sigmas:
            self.reset()                      # a new sampling run (ComfyUI sets sample_sigmas once per run)
            self.run_sigmas = sigmas
        if sigma is None:
            return cfg_stream(options), NUM_TRAIN_TIMESTEPS     # no sigma known: outside every range, computes
        timestep = float(self.model_sampling.timestep(sigma.flatten()[:1].float()).item())
        return cfg_stream(options), timestep
