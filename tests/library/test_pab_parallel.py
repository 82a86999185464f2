"""Allegro PAB on a multi-GPU rank group without ComfyUI (this process is rank 0, the workers are real
processes over gloo): every rank runs its own copy of the PAB on its share of each call, skips the same
attentions as one process would (the counts each rank reports), and the sampled latents equal the
single-process PAB run; a reset (a new run) starts every rank's copy afresh.

Measured spread (default/avx2/avx512 x 1/2 threads; docs/numerics-spread.md), max relative to the single-process
PAB run: sequence 2 0 everywhere; CFG 2 0 at 1 thread, 9.2e-7 to 1.1e-6 at 2 threads (a CFG half is a smaller batch
than the single process's); bound 1e-5, the multi-GPU tests' bound (8.9x the largest). PAB itself moves the result
by 6.4e-3 of its norm here."""
import pytest
import torch

from allegro.config import TransformerConfig
from allegro.dit_wrappers import Wrappers
from allegro.pab import PyramidAttentionBroadcast, SkipRule
from allegro.parallel import ParallelLayout
from allegro.parallel_pool import OnRankGroup, RankGroup
from allegro.schedule import linspace_schedule, timestep_at, training_sigmas
from allegro.transformer import AllegroTransformer3D
from numerics import assert_relative, norm_relative

pytestmark = pytest.mark.slow

CONFIG = TransformerConfig(num_layers=2, num_attention_heads=4, attention_head_dim=6, cross_attention_dim=24,
                           caption_channels=16, sample_frames=4, sample_height=8, sample_width=8)
LATENT = (1, 4, 3, 10, 6)           # 3 x 5 x 3 = 45 tokens: uneven over 2 ranks
STEPS = 5
TOLERANCE = 1e-5
# The 5 calls run at timesteps 999, 749.25, 499.5, 249.75 and 0 (outside the ranges: computes). Per block the
# self-attention computes calls 0, 2, 4 and the cross-attention calls 0, 3 and 4.
SPATIAL, CROSS = SkipRule(2, (0, 1000)), SkipRule(3, (0, 1000))
COMPUTED, SKIPPED = CONFIG.num_layers * (3 + 3), CONFIG.num_layers * (2 + 2)


def random_model() -> AllegroTransformer3D:
    torch.manual_seed(0)
    model = AllegroTransformer3D(CONFIG).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def sample(model, features=()) -> torch.Tensor:
    """Euler with CFG, the conditional and unconditional halves in one batch (as ComfyUI calls the model); the
    wrappers get the call's timestep and a stream name (PAB's options)."""
    table = training_sigmas()
    _, sigmas = linspace_schedule(STEPS, table)
    x = torch.randn(*LATENT, generator=torch.Generator().manual_seed(5)) * sigmas[0]
    generator = torch.Generator().manual_seed(1)
    captions, mask = torch.randn(2, 7, CONFIG.caption_channels, generator=generator), torch.ones(2, 7)
    mask[1, 3:] = 0
    with torch.inference_mode():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            timestep = timestep_at(sigma.expand(2), table)
            wrappers = Wrappers(list(features), options={"timestep": float(timestep[0]), "cache_key": "cond+uncond"})
            eps = model(torch.cat([x, x]) / (sigma ** 2 + 1) ** 0.5, timestep, captions, mask, wrappers)
            positive, negative = eps.chunk(2)
            x = x + (negative + 7.5 * (positive - negative)) * (sigma_next - sigma)
    return x


@pytest.mark.parametrize("cfg,seq", [(1, 2), (2, 1)], ids=["seq2", "cfg2"])
def test_every_rank_skips_what_one_process_skips_and_the_result_is_equal(cfg, seq):
    model = random_model()
    plain = sample(model)
    single = PyramidAttentionBroadcast(SPATIAL, CROSS)
    expected = sample(model, [single])
    assert (single.computed, single.skipped) == (COMPUTED, SKIPPED)
    assert norm_relative(expected, plain) > 1e-3                # PAB matters here

    group = RankGroup(ParallelLayout(cfg, seq), ["cpu"] * 2).start()
    try:
        group.load(model.config, list(model.state_dict().items()), key="pab", dtype=torch.float32)
        pab = PyramidAttentionBroadcast(SPATIAL, CROSS)
        first = sample(model, [pab, OnRankGroup(group)])
        reports, first_counts = group.last_reports, (pab.computed, pab.skipped, dict(pab.ranks))
        # A new run on the same group: rank 0's reset makes every rank's copy start afresh.
        pab.reset()
        again = sample(model, [pab, OnRankGroup(group)])
        again_counts = (pab.computed, pab.skipped, dict(pab.ranks))
        held = [key for key in group.context.replicas.held]
    finally:
        group.close()

    value = assert_relative(first, expected, TOLERANCE, f"PAB on {cfg} x {seq} ranks vs one process")
    print(f"PAB on {cfg} x {seq} ranks: max relative {value:.2e}; per rank [computed, skipped]: {first_counts[2]}")
    assert reports == [(0, CONFIG.num_layers)] * 2              # every block ran on both ranks (and was counted)
    # Rank 0 counts as one process does, and the worker rank skipped the very same attentions of its share.
    assert first_counts == (COMPUTED, SKIPPED, {0: [COMPUTED, SKIPPED], 1: [COMPUTED, SKIPPED]})
    assert torch.equal(again, first) and again_counts == first_counts
    assert held == [("pab", pab.run_id)]                        # the first run's copy was let go


def test_a_rank_copy_reuses_only_for_the_same_whole_call():
    """The ranks' copies decide on the whole call's shape, which every rank shares, not on their own share's."""
    from allegro.pab import RankPAB
    single = PyramidAttentionBroadcast(SPATIAL, CROSS)
    copy = RankPAB(single.rank_spec(None) | {"stream": "s", "timestep": 500.0})
    calls = []

    def run(q, k, v, mask):
        calls.append(q.shape)
        return q.clone()
    for tokens, local in ((45, 23), (45, 23), (47, 24), (47, 24)):
        copy.begin({"stream": "s", "timestep": 500.0}, 2, tokens)
        copy.block = 0
        q = torch.randn(2, 4, local, 6)
        copy.wrap_attention(run, q, q, q, None, cross=False)
    # Call 1 reuses call 0; call 2 has another whole shape (computes); call 3 (count 3, odd) reuses it.
    assert copy.counts() == (0, 1) and copy.computed == 2 and copy.skipped == 2 and len(calls) == 2
