"""One seam for every feature that changes how the Allegro DiT runs: wrappers around its stages.

A feature is a `DiTWrapper` that takes part in one or more stages of a DiT call. The host hands the model
all of a call's wrappers in one `Wrappers` (with the host's own per-call options, which the model passes
to its attention callable untouched), and the model runs each stage through that stage's wrappers,
outermost first, each calling `run` for the rest of the chain (or not calling it, to skip or replace it):

  blocks     wrap_blocks(run, call) -> tokens: all blocks of one DiT call. `call` is a BlocksInput; run(call)
             runs the blocks. E.g. a step cache (reuses a residual instead), multi-GPU (runs them on a rank group).
  block      wrap_block(run, block) -> tokens: one block. `block` is a BlockInput; run(block) runs it.
             E.g. block swap (brings the block's weights in and back out), a host's block replacements.
  attention  wrap_attention(run, q, k, v, mask, cross) -> out, on [B, heads, N, d]; run(q, k, v, mask).
             `cross`: the caption cross-attention, else the self-attention. E.g. sequence parallel.

`order` places a wrapper within each stage (smaller: further out): OUTER for what skips work (caches),
MIDDLE for what changes it (patches), INNER for what only moves or distributes it. Building a `Wrappers`
asks every wrapper's `check_compatible(others)`: a wrapper that cannot work beside another raises
ValueError there, before the model runs, saying what to use instead. A wrapper that `runs_on_ranks` also
works where the blocks run on a multi-GPU rank group: each rank runs its own copy of it, built from its
`rank_spec` (allegro/parallel.py), on that rank's share of the call. Pure PyTorch: the model names no
feature, and hosts (nodes/) define their features as subclasses.
"""
from dataclasses import dataclass

OUTER, MIDDLE, INNER = 0, 50, 100
STAGES = ("blocks", "block", "attention")


class DiTWrapper:
    name = "a DiT wrapper"          # how messages name it: the node or feature a user would recognise
    order = MIDDLE
    changes_output = True           # False: it only moves or distributes work; the blocks compute the same
    runs_on_ranks = False           # True: on a multi-GPU rank group every rank runs a copy (rank_spec, ranks_ran)

    def check_compatible(self, others: list["DiTWrapper"]) -> None:
        """Raise ValueError (what to use instead) if this wrapper cannot run beside `others`."""

    def rank_spec(self, call: "BlocksInput") -> dict:
        """(runs_on_ranks only) What every rank of a rank group needs to run its own copy of this wrapper's block
        and attention stages on its share of `call`, as JSON-able values; asked after this wrapper's blocks stage
        began the call. allegro.parallel.Replicas builds and keeps the copies from it."""
        raise NotImplementedError(f"{self.name} does not run on a rank group")

    def ranks_ran(self, counts: list) -> None:
        """(runs_on_ranks only) What each rank's copy reported for the call just run (its `counts()`), rank 0's
        first."""

    def takes_part(self, stage: str) -> bool:
        method = f"wrap_{stage}"
        return getattr(type(self), method) is not getattr(DiTWrapper, method)

    def wrap_blocks(self, run, call: "BlocksInput"):
        return run(call)

    def wrap_block(self, run, block: "BlockInput"):
        return run(block)

    def wrap_attention(self, run, q, k, v, mask, cross: bool):
        return run(q, k, v, mask)


@dataclass
class BlocksInput:
    """What the blocks stage gets: tokens [B, N, dim], captions [B, L, dim], modulation [B, 6*dim], caption
    mask bias [B, 1, 1, L] or None, RoPE of the token grid, and the call's Wrappers."""
    model: object
    tokens: object
    context: object
    modulation: object
    context_bias: object
    rope: object
    wrappers: "Wrappers"

    @property
    def options(self):
        return self.wrappers.options


@dataclass
class BlockInput:
    """What the block stage gets: the block's index, its input tokens, captions, modulation and RoPE."""
    index: int
    tokens: object
    context: object
    modulation: object
    rope: object


class Wrappers:
    """The wrappers of one DiT call, in stage order, checked against each other; `options`: the host's."""

    def __init__(self, items=(), options=None):
        self.items = sorted(items, key=lambda wrapper: wrapper.order)          # stable: equal orders keep theirs
        self.options = options
        for wrapper in self.items:
            wrapper.check_compatible([other for other in self.items if other is not wrapper])
        self.stages = {stage: [w for w in self.items if w.takes_part(stage)] for stage in STAGES}

    def adding(self, *extra: DiTWrapper, options=None) -> "Wrappers":
        """These wrappers and `extra`, with `options` (the host's are not carried over)."""
        return Wrappers([*self.items, *extra], options)

    def run_blocks(self, innermost, call: BlocksInput):
        run = innermost
        for wrapper in reversed(self.stages["blocks"]):
            run = _link(wrapper.wrap_blocks, run)
        return run(call)

    def block_runner(self, innermost):
        """run(block: BlockInput) → tokens through the block stage's wrappers, ending in innermost(block)."""
        run = innermost
        for wrapper in reversed(self.stages["block"]):
            run = _link(wrapper.wrap_block, run)
        return run

    def attention(self, base, cross: bool):
        """attention(q, k, v, mask) → out through the attention stage's wrappers, ending in base."""
        run = base
        for wrapper in reversed(self.stages["attention"]):
            run = _attention_link(wrapper, run, cross)
        return run


def _link(method, run):
    return lambda value: method(run, value)


def _attention_link(wrapper, run, cross):
    return lambda q, k, v, mask=None: wrapper.wrap_attention(run, q, k, v, mask, cross)


NO_WRAPPERS = Wrappers()
