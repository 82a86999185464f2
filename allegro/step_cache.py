"""Step caching (TeaCache's criterion): skip the transformer blocks on a step whose input has
barely changed since the last step that ran them, and reuse that step's block residual.

The probe is the first block's modulated input — it moves with both the latent and the
timestep. Relative L1 changes are summed over skipped steps; once the sum passes `threshold`
the blocks run again and the sum restarts. A wrapper of the DiT's blocks stage (allegro/dit_wrappers.py),
outermost, so a skipped step never reaches what runs the blocks (e.g. a rank group). Off unless a host
passes it to the model. It is an approximation: the sampler node reports its effect, and tests bound it.
"""
import torch

from .dit_wrappers import OUTER, BlocksInput, DiTWrapper


class StepCache(DiTWrapper):
    name = "Allegro Step Cache"
    order = OUTER

    def __init__(self, threshold: float, start: float = 0.1, end: float = 0.9):
        """threshold: summed relative change that forces a full step (0 = never skip).
        start / end: fraction of the sampling run outside which every step runs in full.
        Each call's stream and progress come from `position` (by default the call's options
        {"cache_key": …, "progress": 0..1}; a host subclass reads its own)."""
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if not 0 <= start <= end <= 1:
            raise ValueError(f"need 0 <= start <= end <= 1, got start={start}, end={end}")
        self.threshold, self.start, self.end = threshold, start, end
        self.streams = {}           # key (e.g. cond/uncond batch layout) → state of that stream
        self.computed = self.skipped = 0

    def position(self, call: BlocksInput) -> tuple:
        """(stream key, progress 0..1) of this call: the CFG batch layout it belongs to and where in the run it is."""
        options = call.options or {}
        return options.get("cache_key"), options.get("progress", 0.0)

    def wrap_blocks(self, run, call: BlocksInput):
        key, progress = self.position(call)
        probe = call.model.transformer_blocks[0].modulated_input(call.tokens, call.modulation)
        if not self.should_run(key, probe, progress):
            return call.tokens + self.residual(key)
        output = run(call)
        self.store(key, output - call.tokens)
        return output

    def reset(self):
        self.streams.clear()
        self.computed = self.skipped = 0

    def should_run(self, key, probe: torch.Tensor, progress: float) -> bool:
        """progress: 0 at the first step of the run, 1 at the last."""
        state = self.streams.setdefault(key, {"probe": None, "accumulated": 0.0, "residual": None})
        previous, state["probe"] = state["probe"], probe
        outside = progress < self.start or progress > self.end
        if previous is None or state["residual"] is None or outside or self.threshold == 0 or previous.shape != probe.shape:
            state["accumulated"] = 0.0
            return True
        change = ((probe - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)).item()
        state["accumulated"] += change
        if state["accumulated"] >= self.threshold:
            state["accumulated"] = 0.0
            return True
        return False

    def store(self, key, residual: torch.Tensor):
        self.streams[key]["residual"] = residual
        self.computed += 1

    def residual(self, key) -> torch.Tensor:
        self.skipped += 1
        return self.streams[key]["residual"]
