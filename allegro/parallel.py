"""Several ranks run the Allegro DiT's blocks together: CFG parallel and sequence parallel (Ulysses).

One DiT call = embed on rank 0 → the 32 blocks on the rank group → final layer on rank 0 (a host's
wrapper of the DiT's blocks stage calls RankGroup.run_blocks). The group is `cfg x seq` ranks:

- CFG parallel: the call's batch (ComfyUI batches the conditional and unconditional halves) is split
  into `cfg` parts, one per rank group.
- Sequence parallel (Ulysses): inside a group the tokens are split into `seq` contiguous ranges. Before
  each self-attention one all-to-all trades token ranges for heads (each rank then attends over all
  tokens with heads/seq heads), a second trades them back. Projections, RoPE (each rank rotates its
  tokens by their own positions), the cross-attention to the caption and the MLP stay local.

The token shards go out by scatter and come back by gather; everything runs on torch.distributed's
collectives (gloo on CPU, NCCL on GPUs). Every rank runs `run_block_call`: rank 0 with the tensors,
the others (allegro.parallel_worker) with None. Wrappers that change what the blocks compute and can run on
the ranks (DiTWrapper.runs_on_ranks, e.g. PAB) travel as their `rank_spec` with the call; every rank, rank 0
included, runs its own copy (`Replicas`) on its share and reports its counts back. Pure PyTorch: no ComfyUI here.
"""
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist

from .dit_wrappers import INNER, NO_WRAPPERS, DiTWrapper
from .pab import RankPAB

OK, CANCELLED = 0, 1


class Cancelled(Exception):
    """The call was abandoned because rank 0 was asked to stop; every rank of a group stops at the same block."""


@dataclass(frozen=True)
class ParallelLayout:
    cfg: int = 1       # rank groups the batch is split over (2: conditional and unconditional apart)
    seq: int = 1       # ranks per group, each holding a contiguous range of the tokens

    @property
    def world(self) -> int:
        return self.cfg * self.seq

    def position(self, rank: int) -> tuple[int, int]:
        """(group, index in the group) of a rank; rank 0 is group 0's first."""
        return divmod(rank, self.seq)

    def group_ranks(self, group: int) -> list[int]:
        return list(range(group * self.seq, (group + 1) * self.seq))

    def check(self, heads: int) -> "ParallelLayout":
        if self.cfg < 1 or self.seq < 1:
            raise ValueError(f"a rank layout needs at least one group of one rank, got cfg={self.cfg}, seq={self.seq}")
        if heads % self.seq:
            usable = [n for n in range(2, heads + 1) if heads % n == 0 and n <= 16]
            raise ValueError(f"The model's {heads} attention heads cannot be split evenly over {self.seq} sequence-parallel "
                             f"ranks: use {', '.join(map(str, usable))} ranks per group.")
        return self


def all_to_all_bytes(layout: ParallelLayout, batch: int, tokens: int, width: int, layers: int,
                     itemsize: int = 2) -> float:
    """Bytes one rank sends (and receives) in the all-to-alls of one DiT call, for even splits: per layer q, k,
    v and the attention output, each [batch/cfg, tokens/seq, width] on a rank, of which (seq-1)/seq leaves it."""
    per_tensor = batch / layout.cfg * tokens / layout.seq * width * itemsize
    return layers * 4 * per_tensor * (layout.seq - 1) / layout.seq


def split_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part `index` when `total` items are cut into `parts` contiguous parts whose sizes
    differ by at most one (the first `total % parts` parts are the longer ones)."""
    size, extra = divmod(total, parts)
    start = index * size + min(index, extra)
    return start, start + size + (1 if index < extra else 0)


def split_sizes(total: int, parts: int) -> list[int]:
    return [stop - start for start, stop in (split_range(total, parts, i) for i in range(parts))]


@dataclass(frozen=True)
class BlockCall:
    """What every rank must know before one run of the blocks (workers get it as one JSON line)."""
    call_id: int
    batch: int                 # B of the DiT call
    tokens: int                # N = frames x rows x cols
    grid: tuple                # (frames, rows, cols) of the token grid: the RoPE positions
    context_tokens: int        # L caption tokens
    has_bias: bool             # whether a caption mask bias [B, 1, 1, L] is sent
    dtype: str                 # the activations' torch dtype, e.g. "bfloat16"
    replicated: tuple = ()     # rank_spec of each wrapper every rank runs a copy of (Replicas), in order

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BlockCall":
        return cls(**{**values, "grid": tuple(values["grid"]), "replicated": tuple(values.get("replicated", ()))})

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class RankContext:
    """One rank's view of the group: its rank, the layout, its sequence group (None when seq == 1), its
    device, and how it learns that rank 0 wants the current call stopped."""
    rank: int
    layout: ParallelLayout
    sequence_group: object
    device: torch.device
    stop_requested: object = None          # callable () -> bool; None: never
    replicas: "Replicas" = field(default_factory=lambda: Replicas())


class StopSignal:
    """Checked before each block's self-attention: raises Cancelled on every rank of a sequence group at
    the same block (a rank leaving alone would leave its peers waiting in the all-to-all)."""

    def __init__(self, context: RankContext):
        self.context = context

    def __call__(self):
        requested = bool(self.context.stop_requested and self.context.stop_requested())
        group = self.context.sequence_group
        if group is not None:
            flag = torch.tensor([int(requested)], device=self.context.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
            requested = bool(flag.item())
        if requested:
            raise Cancelled()


class UlyssesAttention:
    """Self-attention of all N tokens from one rank's range of them: q, k, v [B, H, n_r, d] in, [B, H, n_r, d]
    out. One all-to-all gives every rank all tokens for H/P heads, the attention runs on those, and a
    second all-to-all returns each rank its own tokens for all heads."""

    def __init__(self, attention, group, token_counts: list[int]):
        self.attention, self.group, self.token_counts = attention, group, token_counts
        self.ranks = len(token_counts)

    def __call__(self, q, k, v, mask=None):
        if mask is not None:
            raise ValueError("sequence-parallel attention is for the unmasked self-attention only")
        batch, heads, local, head_dim = q.shape
        p, part = self.ranks, heads // self.ranks
        # Send rank s heads [s*part, (s+1)*part) of my tokens: [P, 3, B, part, n_r, d] in rank order.
        qkv = torch.stack([q, k, v]).unflatten(2, (p, part)).permute(2, 0, 1, 3, 4, 5).contiguous()
        per_rank = 3 * batch * part * head_dim
        received = torch.empty(per_rank * sum(self.token_counts), dtype=q.dtype, device=q.device)
        dist.all_to_all_single(received, qkv.flatten(), [per_rank * n for n in self.token_counts],
                               [per_rank * local] * p, group=self.group)
        pieces = [piece.view(3, batch, part, n, head_dim)
                  for piece, n in zip(received.split([per_rank * n for n in self.token_counts]), self.token_counts)]
        q, k, v = torch.cat(pieces, dim=3).unbind(0)                         # each [B, part, N, d]
        out = self.attention(q, k, v, None)                                  # [B, part, N, d]
        # Send rank s its tokens for my heads; receive my tokens for every rank's heads.
        outgoing = torch.cat([t.flatten() for t in out.split(self.token_counts, dim=2)])
        back = torch.empty(batch * heads * local * head_dim, dtype=out.dtype, device=out.device)
        dist.all_to_all_single(back, outgoing, [batch * part * local * head_dim] * p,
                               [batch * part * n * head_dim for n in self.token_counts], group=self.group)
        return back.view(p, batch, part, local, head_dim).permute(1, 0, 2, 3, 4).reshape(batch, heads, local, head_dim)


class RankAttention(DiTWrapper):
    """The wrapper every rank's blocks run with: before each block the stop check, then Ulysses (seq > 1)
    around the self-attention. Counts the blocks it ran (reported back to rank 0)."""
    name = "sequence-parallel attention"
    order = INNER
    changes_output = False

    def __init__(self, context: RankContext, token_counts: list[int]):
        self.stop = StopSignal(context)
        self.group, self.token_counts = context.sequence_group, token_counts
        self.blocks = 0

    def wrap_block(self, run, block):
        self.stop()                 # here, not in the self-attention: a wrapper further out may skip that one
        self.blocks += 1
        return run(block)

    def wrap_attention(self, run, q, k, v, mask, cross):
        if cross or self.group is None:
            return run(q, k, v, mask)
        return UlyssesAttention(run, self.group, self.token_counts)(q, k, v, mask)


REPLICA_KINDS = {"pab": RankPAB}        # rank_spec()["kind"] → the class of the ranks' copies


class Replicas:
    """One rank's copies of rank 0's replicated wrappers (BlockCall.replicated), kept from call to call while
    rank 0 sends the same ones, so their state (e.g. PAB's kept attention outputs) lasts the run: a spec with
    another "run" (rank 0's wrapper was reset) makes a fresh copy; copies no call names any more are dropped.
    A copy has begin(spec, batch, tokens) before each call and counts() → (int, int) after it."""

    def __init__(self):
        self.held = {}

    def for_call(self, call: BlockCall) -> list:
        kept = {}
        for spec in call.replicated:
            key = (spec["kind"], spec["run"])
            replica = self.held.get(key) or REPLICA_KINDS[spec["kind"]](spec)
            replica.begin(spec, call.batch, call.tokens)
            kept[key] = replica
        self.held = kept
        return list(kept.values())


def new_sequence_group(layout: ParallelLayout, rank: int, timeout):
    """Create every rank group's process group (each rank must create all of them, in the same order) and
    return this rank's; None when groups are one rank (nothing to exchange). `timeout` (a timedelta) bounds
    its collectives (new groups do not inherit the default group's)."""
    if layout.seq == 1:
        return None
    mine = None
    for group_index in range(layout.cfg):
        group = dist.new_group(layout.group_ranks(group_index), timeout=timeout)
        if group_index == layout.position(rank)[0]:
            mine = group
    return mine


def stop_key(call_id: int) -> str:
    """The store key rank 0 sets when it wants call `call_id` stopped."""
    return f"stop/{call_id}"


def local_rope(rope, start: int, stop: int):
    """The RoPE tables of tokens [start, stop) only: each rank rotates its tokens by their own positions."""
    from copy import copy
    local = copy(rope)
    local.cos = [table[start:stop] for table in rope.cos]
    local.sin = [table[start:stop] for table in rope.sin]
    return local


def run_block_call(model, context: RankContext, call: BlockCall, tokens=None, caption=None, modulation=None,
                   caption_bias=None, rope=None, wrappers=NO_WRAPPERS):
    """One run of `model`'s blocks across the group, called by every rank at the same time. Rank 0 passes
    the call's tensors (tokens [B, N, dim], caption [B, L, dim], modulation [B, 6*dim], caption_bias
    [B, 1, 1, L] or None, rope for the whole grid) and gets the blocks' output tokens [B, N, dim], each
    rank's (status, blocks run), and per replicated wrapper (call.replicated) each rank's copy's counts();
    the other ranks pass None and get None. Raises Cancelled on rank 0 when any rank stopped. `wrappers`:
    rank 0's own wrappers of the block and attention stages (they must not change what the blocks compute:
    the other ranks run without them); no host options reach the attention."""
    layout, rank, device, dtype = context.layout, context.rank, context.device, call.torch_dtype
    dim = model.config.inner_dim
    lead = rank == 0
    group_index, seq_index = layout.position(rank)
    batch_start, batch_stop = split_range(call.batch, layout.cfg, group_index)
    token_start, token_stop = split_range(call.tokens, layout.seq, seq_index)
    max_batch, max_tokens = -(-call.batch // layout.cfg), -(-call.tokens // layout.seq)

    # 1. What every rank needs of the whole batch: captions, timestep modulation, caption mask bias.
    if not lead:
        caption = torch.empty(call.batch, call.context_tokens, dim, dtype=dtype, device=device)
        modulation = torch.empty(call.batch, 6 * dim, dtype=dtype, device=device)
        caption_bias = (torch.empty(call.batch, 1, 1, call.context_tokens, dtype=dtype, device=device)
                        if call.has_bias else None)
    shared = [caption, modulation] + ([caption_bias] if call.has_bias else [])
    shared = [t.to(device=device, dtype=dtype).contiguous() for t in shared]
    for tensor in shared:
        dist.broadcast(tensor, src=0)
    caption, modulation = shared[0], shared[1]
    caption_bias = shared[2] if call.has_bias else None

    # 2. Each rank's tokens: its group's batch rows, its range of the sequence (padded to one size).
    shard = torch.zeros(max_batch, max_tokens, dim, dtype=dtype, device=device)
    pieces = None
    if lead:
        pieces = []
        for other in range(layout.world):
            g, s = layout.position(other)
            (b0, b1), (n0, n1) = split_range(call.batch, layout.cfg, g), split_range(call.tokens, layout.seq, s)
            piece = torch.zeros_like(shard)
            piece[:b1 - b0, :n1 - n0] = tokens[b0:b1, n0:n1]
            pieces.append(piece)
    dist.scatter(shard, pieces, src=0)

    # 3. The blocks on this rank's share (a group with no batch rows, e.g. B = 1 over two groups, idles).
    status, output = OK, torch.zeros_like(shard)
    attention = RankAttention(context, split_sizes(call.tokens, layout.seq))
    replicas = context.replicas.for_call(call)
    if batch_stop > batch_start:
        rope = local_rope(rope if rope is not None else model.rope(call.grid, device), token_start, token_stop)
        rows, count = batch_stop - batch_start, token_stop - token_start
        bias = caption_bias[batch_start:batch_stop] if caption_bias is not None else None
        try:
            output[:rows, :count] = model.run_blocks(shard[:rows, :count], caption[batch_start:batch_stop],
                                                     modulation[batch_start:batch_stop], bias, rope,
                                                     wrappers.adding(*replicas, attention))
        except Cancelled:
            status = CANCELLED

    # 4. Every rank learns every status (so all skip the gather alike when one stopped); rank 0 collects.
    counts = [value for replica in replicas for value in replica.counts()]
    report = torch.tensor([status, attention.blocks, *counts], dtype=torch.int64, device=device)
    gathered_reports = [torch.empty_like(report) for _ in range(layout.world)]
    dist.all_gather(gathered_reports, report)
    values = [[int(v) for v in r.tolist()] for r in gathered_reports]
    reports = [tuple(v[:2]) for v in values]
    replica_counts = [[tuple(v[2 + 2 * i:4 + 2 * i]) for v in values] for i in range(len(replicas))]
    if any(s == CANCELLED for s, _ in reports):
        context.replicas.held.clear()       # a stopped call leaves their counts mid-call: the next starts anew
        if lead:
            raise Cancelled(reports)
        return None
    gathered = [torch.empty_like(output) for _ in range(layout.world)] if lead else None
    dist.gather(output, gathered, dst=0)
    if not lead:
        return None
    result = torch.empty(call.batch, call.tokens, dim, dtype=dtype, device=device)
    for other, piece in enumerate(gathered):
        g, s = layout.position(other)
        (b0, b1), (n0, n1) = split_range(call.batch, layout.cfg, g), split_range(call.tokens, layout.seq, s)
        result[b0:b1, n0:n1] = piece[:b1 - b0, :n1 - n0]
    return result, reports, replica_counts
