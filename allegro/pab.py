"""Pyramid Attention Broadcast (PAB): reuse an attention's output over the next few steps instead of
recomputing it, in the middle of the run where attention outputs change little from step to step.

Each attention of each block keeps its own count of calls: while the current timestep lies strictly
inside that kind's timestep range, the attention is computed on every `every`-th call (the first of each
run of `every`) and the last output is reused on the others; outside the range it is always computed.
Allegro's self-attention (`attn1`, full 3-D) is the "spatial" kind, the caption cross-attention (`attn2`)
the "cross" kind; `every` = 1 turns a kind off. This is the behaviour of diffusers'
`apply_pyramid_attention_broadcast` on `AllegroTransformer3DModel` (tests/library/test_pab.py compares them).

A wrapper of the DiT's seam (allegro/dit_wrappers.py): the blocks stage tells it the call's stream (e.g.
the CFG batch layout, which has its own counts) and timestep, the block stage which block runs, the
attention stage skips. Skipping saves the attention product itself; the q/k/v/out projections still run.

On a multi-GPU rank group (allegro/parallel.py) every rank runs its own copy, a `RankPAB` built from rank 0's
`rank_spec` (the rules, the call's stream and timestep, and which run it is), on its own share of the tokens:
the skip decision depends only on those, the block and the call count, so every rank skips the same
attentions (the ranks of a sequence group skip the self-attention's all-to-alls together) and each reuses its
own share of the output. The copies report their counts back (`ranks`).
"""
import uuid
from dataclasses import dataclass

from .dit_wrappers import OUTER, BlockInput, BlocksInput, DiTWrapper

DEFAULT_TIMESTEPS = (100, 800)          # diffusers' default timestep skip range for every kind


@dataclass(frozen=True)
class SkipRule:
    """every: compute on every `every`-th call, reuse in between (1: always compute);
    timesteps (low, high): skipping happens only while low < timestep < high."""
    every: int = 1
    timesteps: tuple = DEFAULT_TIMESTEPS

    def __post_init__(self):
        if int(self.every) != self.every or self.every < 1:
            raise ValueError(f"a PAB skip range must be a whole number >= 1 (1 = off), got {self.every}")
        low, high = self.timesteps
        if not low <= high:
            raise ValueError(f"a PAB timestep range needs start <= end, got {low} .. {high}")

    def computes(self, count: int, timestep: float) -> bool:
        """Whether the call numbered `count` (0 = first of the run) at `timestep` computes the attention."""
        inside = self.timesteps[0] < timestep < self.timesteps[1]
        return count == 0 or not inside or count % self.every == 0


class PyramidAttentionBroadcast(DiTWrapper):
    name = "Allegro PAB"
    order = OUTER
    runs_on_ranks = True

    def __init__(self, spatial: SkipRule = SkipRule(every=2), cross: SkipRule = SkipRule()):
        """spatial: the rule for the self-attentions; cross: for the caption cross-attentions.
        The defaults are diffusers' (PyramidAttentionBroadcastConfig() on Allegro: spatial every 2nd call,
        cross-attention off, both in timesteps 100..800)."""
        self.rules = {False: spatial, True: cross}
        self.streams = {}           # (stream, block index, cross) → {"count": calls so far, "output": last}
        self.current = (None, 0.0)  # (stream, timestep) of the call being run
        self.block = None
        self.reset()

    def position(self, call: BlocksInput) -> tuple:
        """(stream key, timestep 0..1000) of this call; by default from the call's options
        {"cache_key": …, "timestep": …}. A host subclass reads its own."""
        options = call.options or {}
        if options.get("timestep") is None:
            raise ValueError("Allegro PAB needs the call's timestep: pass options={'timestep': t} with the wrappers")
        return options.get("cache_key"), float(options["timestep"])

    def reset(self):
        """Start a new run: no outputs kept, counts zero (on a rank group, every rank's copy starts afresh too)."""
        self.streams.clear()
        self.computed = self.skipped = 0    # attentions computed and reused (on a rank group: by rank 0)
        self.ranks = {}                     # on a rank group: rank → [computed, skipped] over this run
        self.run_id = uuid.uuid4().hex      # names this run to the ranks' copies

    def wrap_blocks(self, run, call: BlocksInput):
        self.current = self.position(call)
        return run(call)

    def wrap_block(self, run, block: BlockInput):
        self.block = block.index
        return run(block)

    def output_shape(self, q, v) -> tuple:
        """The attention's output shape [B, heads, N, d]: a kept output of another shape is not reused."""
        return (*q.shape[:-1], v.shape[-1])

    def wrap_attention(self, run, q, k, v, mask, cross: bool):
        rule = self.rules[cross]
        if rule.every == 1:                  # off: keep no output (a full-size one is ~0.7 GB per attention)
            self.computed += 1
            return run(q, k, v, mask)
        stream, timestep = self.current
        state = self.streams.setdefault((stream, self.block, cross), {"count": 0, "output": None, "shape": None})
        shape = self.output_shape(q, v)
        reusable = state["output"] is not None and state["shape"] == shape
        if reusable and not rule.computes(state["count"], timestep):
            output = state["output"]
            self.skipped += 1
        else:
            output = run(q, k, v, mask)
            self.computed += 1
        state["output"], state["shape"], state["count"] = output, shape, state["count"] + 1
        return output

    # --- on a multi-GPU rank group ----------------------------------------------------------------
    def rank_spec(self, call: BlocksInput) -> dict:
        """The rules, this run and the call's stream and timestep (set by wrap_blocks) for the ranks' copies."""
        stream, timestep = self.current
        return {"kind": "pab", "run": self.run_id, "stream": repr(stream), "timestep": timestep,
                "rules": [[rule.every, list(rule.timesteps)] for rule in (self.rules[False], self.rules[True])]}

    def ranks_ran(self, counts: list):
        for rank, (computed, skipped) in enumerate(counts):
            total = self.ranks.setdefault(rank, [0, 0])
            total[0] += computed
            total[1] += skipped
        self.computed += counts[0][0]
        self.skipped += counts[0][1]


class RankPAB(PyramidAttentionBroadcast):
    """One rank's copy of rank 0's PAB on a rank group (made by allegro.parallel.Replicas from `rank_spec`, kept
    for the run): the same rules and per-(stream, block, kind) counts, over this rank's share of each call. A kept
    output is reused when the whole call has the shape it had (not this rank's share's: an uneven split could
    differ between ranks), so the ranks decide alike, as one process would."""

    def __init__(self, spec: dict):
        (spatial, spatial_range), (cross, cross_range) = spec["rules"]
        super().__init__(SkipRule(spatial, tuple(spatial_range)), SkipRule(cross, tuple(cross_range)))
        self.run_id = spec["run"]
        self.whole = (0, 0)
        self.started = (0, 0)

    def begin(self, spec: dict, batch: int, tokens: int):
        """A new call of this run: its stream and timestep, and the whole call's batch and token count."""
        self.current = (spec["stream"], float(spec["timestep"]))
        self.whole = (batch, tokens)
        self.started = (self.computed, self.skipped)

    def counts(self) -> tuple[int, int]:
        """(computed, skipped) attentions of this rank in the call since `begin`."""
        return self.computed - self.started[0], self.skipped - self.started[1]

    def output_shape(self, q, v) -> tuple:
        return self.whole[0], q.shape[1], self.whole[1], v.shape[-1]
