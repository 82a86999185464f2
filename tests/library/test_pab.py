"""Allegro PAB (allegro/pab.py) equals diffusers' apply_pyramid_attention_broadcast on
AllegroTransformer3DModel, call by call through a run of timesteps, and on TI2V reuses exactly the
attention outputs it should."""
import pytest
import torch
from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

from allegro.dit_wrappers import Wrappers
from allegro.pab import PyramidAttentionBroadcast, SkipRule
from numerics import assert_relative, norm_relative
from test_transformer import ours_from, reference_model, reference_rope, ti2v_from

# 8 calls as a sampler makes them: timesteps from 999 down, some outside each kind's range.
TIMESTEPS = [999.0, 870.0, 760.5, 640.0, 520.0, 390.25, 260.0, 90.0]
SPATIAL, CROSS = SkipRule(every=2, timesteps=(100, 800)), SkipRule(every=3, timesteps=(200, 900))
FRAMES, HEIGHT, WIDTH = 3, 8, 8


def step_inputs(count, channels=4):
    """Per call: a latent that moves from step to step (CFG-sized batch of 2), fixed captions and mask."""
    torch.manual_seed(11)
    base = torch.randn(2, channels, FRAMES, HEIGHT, WIDTH)
    latents = [base + 0.3 * step * torch.randn_like(base) for step in range(count)]
    context = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return latents, context, mask


def ours_run(model, pab, latents, context, mask):
    outputs = []
    with torch.no_grad():
        for latent, t in zip(latents, TIMESTEPS):
            wrappers = Wrappers([pab] if pab else [], options={"timestep": t})
            outputs.append(model(latent, torch.tensor([t, t]), context, mask, wrappers=wrappers))
    return outputs


def test_pab_equals_diffusers_at_every_call_t2v_and_zeroed_ti2v():
    """TI2V against diffusers: diffusers has no TI2V, so the TI2V model with zeroed branches (which equals T2V,
    test_transformer) runs with PAB against diffusers' T2V with PAB. Measured max relative difference over the
    8 calls: 0 (T2V) and 0 (TI2V zeroed) under ATEN_CPU_CAPABILITY default, avx2 and avx512, 1 and 2 threads;
    bound 1e-5 (the transformer's parity bound, should other kernels order sums differently). PAB itself moves the result by 1.3e-2 and 1.8e-2
    (norm-relative) at calls that reuse self-attentions, 6.9e-4 to 2.4e-3 where only cross-attentions."""
    reference = reference_model()
    t2v, _ = ours_from(reference)
    ti2v = ti2v_from(reference, branch_std=0.0)
    latents, context, mask = step_inputs(len(TIMESTEPS))
    now = {"t": None}
    apply_pyramid_attention_broadcast(reference, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=SPATIAL.every, spatial_attention_timestep_skip_range=SPATIAL.timesteps,
        cross_attention_block_skip_range=CROSS.every, cross_attention_timestep_skip_range=CROSS.timesteps,
        current_timestep_callback=lambda: now["t"]))
    freqs, positions = reference_rope(FRAMES, HEIGHT // 2, WIDTH // 2, 24)
    expected = []
    with torch.no_grad():
        for latent, t in zip(latents, TIMESTEPS):
            now["t"] = t
            expected.append(reference(latent, context.unsqueeze(1), torch.tensor([t, t]), encoder_attention_mask=mask,
                                      image_rotary_emb=(freqs, positions), return_dict=False)[0])
    pab = PyramidAttentionBroadcast(SPATIAL, CROSS)
    with_pab = ours_run(t2v, pab, latents, context, mask)
    zeros = torch.zeros(2, 8, FRAMES, HEIGHT, WIDTH)
    with_pab_ti2v = ours_run(ti2v, PyramidAttentionBroadcast(SPATIAL, CROSS),
                             [torch.cat([latent, zeros], 1) for latent in latents], context, mask)
    plain = ours_run(t2v, None, latents, context, mask)
    for call, t in enumerate(TIMESTEPS):
        assert_relative(with_pab[call], expected[call], 1e-5, f"T2V call {call} (t={t})")
        assert_relative(with_pab_ti2v[call], expected[call], 1e-5, f"TI2V zeroed, call {call} (t={t})")
    # Per call: (self-attention computed?, cross-attention computed?) → 2 blocks each.
    spatial = [SPATIAL.computes(i, t) for i, t in enumerate(TIMESTEPS)]
    cross = [CROSS.computes(i, t) for i, t in enumerate(TIMESTEPS)]
    assert spatial == [True, True, True, False, True, False, True, True]
    assert cross == [True, False, False, True, False, False, True, True]
    assert pab.skipped == 2 * (spatial.count(False) + cross.count(False))
    assert pab.computed == 2 * (spatial.count(True) + cross.count(True))
    # PAB moves the result far more than the parity bound wherever it reused something, and not at all elsewhere.
    moved = [norm_relative(with_pab[call], plain[call]) for call in range(len(TIMESTEPS))]
    print("moved by PAB:", [f"{value:.2g}" for value in moved])
    for call, value in enumerate(moved):
        if not spatial[call]:
            assert value > 1e-2, (call, value)
        elif not cross[call]:
            assert value > 1e-4, (call, value)                     # cross-attention over 9 captions moves less
        else:
            assert value == 0, (call, value)


def test_pab_on_ti2v_reuses_exactly_the_previous_self_attention():
    """TI2V with non-zero branches has no diffusers counterpart: the expectation is built by hand, by
    recording each block's self-attention output at call 0 and putting it back at call 1.
    Measured max relative difference: 0 (the same ops on the same tensors) under default, avx2 and avx512
    kernels, 1 and 2 threads; bound 1e-6.
    PAB moves call 1 by 8.5e-3 (norm-relative)."""
    from allegro.dit_wrappers import DiTWrapper

    class Replay(DiTWrapper):
        def __init__(self, replay=None):
            self.outputs, self.replay, self.block = {}, replay, None

        def wrap_block(self, run, block):
            self.block = block.index
            return run(block)

        def wrap_attention(self, run, q, k, v, mask, cross):
            if cross:
                return run(q, k, v, mask)
            if self.replay is not None:
                return self.replay[self.block]
            self.outputs[self.block] = run(q, k, v, mask)
            return self.outputs[self.block]

    ti2v = ti2v_from(reference_model(), branch_std=0.05)
    latents, context, mask = step_inputs(3, channels=12)
    times = [700.0, 600.0, 500.0]
    pab = PyramidAttentionBroadcast(SkipRule(every=2), SkipRule())
    recorder = Replay()
    with torch.no_grad():
        got = [ti2v(x, torch.tensor([t, t]), context, mask, wrappers=Wrappers([pab], options={"timestep": t}))
               for x, t in zip(latents, times)]
        first = ti2v(latents[0], torch.tensor([700.0] * 2), context, mask, wrappers=Wrappers([recorder]))
        reused = ti2v(latents[1], torch.tensor([600.0] * 2), context, mask,
                      wrappers=Wrappers([Replay(recorder.outputs)]))
        third = ti2v(latents[2], torch.tensor([500.0] * 2), context, mask)
        full_second = ti2v(latents[1], torch.tensor([600.0] * 2), context, mask)
    assert_relative(got[0], first, 1e-6, "call 0 computes")
    assert_relative(got[1], reused, 1e-6, "call 1 reuses call 0's self-attention")
    assert_relative(got[2], third, 1e-6, "call 2 computes")
    assert norm_relative(got[1], full_second) > 1e-3                      # measured 8.5e-3
    assert (pab.computed, pab.skipped) == (2 * 2 + 3 * 2, 2)


def test_streams_keep_their_own_counts_and_a_new_shape_recomputes():
    model, _ = ours_from(reference_model())
    latents, context, mask = step_inputs(3)
    pab = PyramidAttentionBroadcast(SkipRule(every=2), SkipRule())
    with torch.no_grad():
        for key in ("cond", "uncond"):                                   # separate CFG calls of one step
            model(latents[0], torch.tensor([500.0] * 2), context, mask,
                  wrappers=Wrappers([pab], options={"timestep": 500.0, "cache_key": key}))
        assert pab.skipped == 0
        for key in ("cond", "uncond"):
            model(latents[1], torch.tensor([400.0] * 2), context, mask,
                  wrappers=Wrappers([pab], options={"timestep": 400.0, "cache_key": key}))
        assert pab.skipped == 2 * 2                                      # each stream reused its own
        model(latents[2][:1], torch.tensor([300.0]), context[:1], mask[:1],
              wrappers=Wrappers([pab], options={"timestep": 300.0, "cache_key": "cond"}))
    assert pab.skipped == 4, "a batch of another size must not reuse the cached outputs"


@pytest.mark.parametrize("every,timesteps,message", [(0, (100, 800), "whole number >= 1"),
                                                     (1.5, (100, 800), "whole number >= 1"),
                                                     (2, (800, 100), "start <= end")])
def test_bad_rules_are_refused(every, timesteps, message):
    with pytest.raises(ValueError, match=message):
        SkipRule(every=every, timesteps=timesteps)


def test_missing_timestep_is_a_clear_error():
    model, _ = ours_from(reference_model())
    with pytest.raises(ValueError, match="needs the call's timestep"):
        model(torch.zeros(1, 4, 2, 8, 8), torch.tensor([1.0]), torch.zeros(1, 3, 32),
              wrappers=Wrappers([PyramidAttentionBroadcast()]))
