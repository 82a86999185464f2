"""The DiT equals diffusers' AllegroTransformer3DModel on the same weights, and the TI2V branches
behave as the original repo's: zeroed they change nothing, non-zero they change the output."""
import pytest
import torch
from diffusers import AllegroTransformer3DModel
from diffusers.models.embeddings import apply_rotary_emb_allegro, get_3d_rotary_pos_embed_allegro

from allegro.rope import RotaryEmbedding3D
from allegro.config import transformer_config_from_dict
from allegro.transformer import AllegroTransformer3D
from numerics import assert_measured, assert_relative, max_relative

TINY = dict(num_attention_heads=2, attention_head_dim=24, num_layers=2, cross_attention_dim=48,
            caption_channels=32, in_channels=4, out_channels=4)


def reference_model(seed=0):
    torch.manual_seed(seed)
    return AllegroTransformer3DModel(**TINY, sample_frames=4, sample_height=8, sample_width=8).eval()


def ours_from(reference, **overrides) -> AllegroTransformer3D:
    model = AllegroTransformer3D(transformer_config_from_dict({**dict(reference.config), **overrides})).eval()
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected
    return model, missing


def reference_rope(frames, rows, cols, head_dim, scales=(2.2, 2.0, 2.0)):
    freqs_t, freqs_h, freqs_w, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        head_dim, ((0, 0), (rows, cols)), (rows, cols), frames, scales)
    positions = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long()).T.reshape(3, 1, -1)
    return (freqs_t, freqs_h, freqs_w), tuple(positions)


def test_rope_equals_reference():
    """The 3D rotary embedding equals the reference's apply_rotary_emb_allegro. Measured spread (default/avx2/avx512 ×
    1/2 threads): 0 (the same elementwise ops on the same tensors); bound 1e-6."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4 * 5 * 6, 24)
    ours = RotaryEmbedding3D(24, (4, 5, 6), (2.2, 2.0, 2.0)).apply(x)
    freqs, positions = reference_rope(4, 5, 6, 24)
    assert_relative(ours, apply_rotary_emb_allegro(x, freqs, positions), 1e-6)


def test_state_dict_names_and_shapes_equal_diffusers():
    reference = reference_model()
    model, missing = ours_from(reference)
    assert missing == []
    ours = model.state_dict()
    theirs = reference.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize("frames,height,width", [(3, 8, 8), (6, 20, 12)])
def test_forward_equals_diffusers_with_caption_mask(frames, height, width):
    """One DiT forward equals diffusers' with a caption mask, and what the mask hides changes nothing. Measured spread
    (default/avx2/avx512 × 1/2 threads): vs diffusers 0, padding changed 0, at both sizes; bound 1e-5 (the DiT
    parity bound, for kernels that order a sum otherwise)."""
    reference = reference_model()
    model, _ = ours_from(reference)
    torch.manual_seed(2)
    x = torch.randn(2, 4, frames, height, width)
    timestep = torch.tensor([999.0, 388.909])
    context = torch.randn(2, 16, 32)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, 5:] = 0
    mask[1, 11:] = 0
    with torch.no_grad():
        freqs, positions = reference_rope(frames, height // 2, width // 2, 24)
        expected = reference(x, context.unsqueeze(1), timestep, encoder_attention_mask=mask,
                             image_rotary_emb=(freqs, positions), return_dict=False)[0]
        actual = model(x, timestep, context, mask)
    assert actual.shape == (2, 4, frames, height, width)
    assert_relative(actual, expected, 1e-5, "vs diffusers")
    # The mask matters: padding tokens must not leak into the result.
    context_changed = context.clone()
    context_changed[0, 5:] = 100.0
    with torch.no_grad():
        assert_relative(model(x, timestep, context_changed, mask)[0], actual[0], 1e-5, "padding changed")
        assert not torch.allclose(model(x, timestep, context_changed, None)[0], actual[0], atol=1e-3)


def ti2v_from(reference, branch_std):
    model, missing = ours_from(reference, ti2v=True)
    assert sorted(missing) == sorted(
        f"pos_embed_{b}.{k}" for b in ("mask", "masked_video", "first_frame")
        for k in ("0.proj.weight", "0.proj.bias", "1.weight"))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in missing:
                tensor.copy_(torch.randn_like(tensor) * branch_std)
        for branch in ("pos_embed_mask", "pos_embed_masked_video", "pos_embed_first_frame"):
            if branch_std == 0:
                getattr(model, branch)[1].weight.zero_()     # as trained from: zero-initialised linears
    return model


def test_ti2v_with_zeroed_branches_equals_t2v():
    """The TI2V DiT with its image branches zeroed computes what the T2V DiT computes. Measured spread
    (default/avx2/avx512 × 1/2 threads): 0; bound 1e-5 (the DiT parity bound)."""
    reference = reference_model()
    t2v, _ = ours_from(reference)
    ti2v = ti2v_from(reference, branch_std=0.0)
    torch.manual_seed(4)
    latent = torch.randn(1, 4, 4, 8, 8)
    condition = torch.randn(1, 8, 4, 8, 8)
    timestep, context = torch.tensor([500.0]), torch.randn(1, 7, 32)
    with torch.no_grad():
        expected = t2v(latent, timestep, context)
        actual = ti2v(torch.cat([latent, condition], dim=1), timestep, context)
    assert_relative(actual, expected, 1e-5)


def test_ti2v_branches_change_the_output():
    reference = reference_model()
    ti2v = ti2v_from(reference, branch_std=0.05)
    torch.manual_seed(5)
    latent, context, timestep = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 7, 32), torch.tensor([500.0])
    masked_video, mask = torch.randn(1, 4, 4, 8, 8), torch.ones(1, 4, 4, 8, 8)
    with torch.no_grad():
        base = ti2v(torch.cat([latent, masked_video, mask], 1), timestep, context)
        other_video = ti2v(torch.cat([latent, masked_video * 2, mask], 1), timestep, context)
        other_mask = ti2v(torch.cat([latent, masked_video, mask * 0], 1), timestep, context)
    assert (base - other_video).abs().max() > 1e-3
    assert (base - other_mask).abs().max() > 1e-3


def test_wrong_channel_count_is_a_clear_error():
    model, _ = ours_from(reference_model())
    with pytest.raises(ValueError, match="takes 4 input channels, got 12"):
        model(torch.zeros(1, 12, 2, 8, 8), torch.tensor([1.0]), torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.zeros(1, 4, 2, 7, 8), torch.tensor([1.0]), torch.zeros(1, 3, 32))


def test_rope_shared_tables_reproduce_the_original_cache():
    """The original repo caches RoPE tables by length: with as many latent frames as token rows,
    the rows reuse the frame axis's table (scale 2.2, not 2.0). Written out by hand here."""
    from allegro.rope import axis_tables, rotate
    torch.manual_seed(6)
    x = torch.randn(1, 2, 4 * 4 * 6, 24)
    shared = RotaryEmbedding3D(24, (4, 4, 6), (2.2, 2.0, 2.0), share_equal_lengths=True).apply(x)
    frame_cos, frame_sin = axis_tables(8, 4, 2.2)
    col_cos, col_sin = axis_tables(8, 6, 2.0)
    t_index = torch.arange(4).repeat_interleave(24)
    h_index = torch.arange(4).repeat_interleave(6).repeat(4)
    w_index = torch.arange(6).repeat(16)
    t, h, w = x.chunk(3, dim=-1)
    expected = torch.cat([rotate(t, frame_cos[t_index], frame_sin[t_index]),
                          rotate(h, frame_cos[h_index], frame_sin[h_index]),     # the frame axis's table
                          rotate(w, col_cos[w_index], col_sin[w_index])], dim=-1)
    assert torch.equal(shared, expected)
    separate = RotaryEmbedding3D(24, (4, 4, 6), (2.2, 2.0, 2.0)).apply(x)
    assert not torch.allclose(shared, separate)
    # Without equal lengths the two agree.
    x = torch.randn(1, 2, 3 * 4 * 6, 24)
    assert torch.equal(RotaryEmbedding3D(24, (3, 4, 6), (2.2, 2.0, 2.0), share_equal_lengths=True).apply(x),
                       RotaryEmbedding3D(24, (3, 4, 6), (2.2, 2.0, 2.0)).apply(x))


def test_chunked_feed_forward_equals_unchunked():
    """The feed-forward run in chunks of the sequence equals the unchunked feed-forward. Measured spread
    (default/avx2/avx512 × 1/2 threads): 1.7e-7 .. 2.2e-7; bound 1e-6 (4.5x the largest)."""
    model, _ = ours_from(reference_model())
    torch.manual_seed(7)
    x, timestep, context = torch.randn(1, 4, 5, 8, 10), torch.tensor([300.0]), torch.randn(1, 6, 32)
    with torch.no_grad():
        whole = model(x, timestep, context)
        model.set_feed_forward_chunking(7)            # 100 tokens in chunks of 7
        chunked = model(x, timestep, context)
    assert_relative(chunked, whole, 1e-6)


def at(cache, progress):
    """The model call's wrappers: the step cache, told the stream and the progress of this call."""
    from allegro.dit_wrappers import Wrappers
    return Wrappers([cache], options={"cache_key": "c", "progress": progress})


def test_step_cache_skips_blocks_and_reuses_the_residual():
    """The step cache computes the first step exactly and at a cached step skips the blocks, reusing the last residual:
    the output moves, by less than half its largest value. Measured spread (default/avx2/avx512 × 1/2 threads):
    first step computed 0 in every setting (bound 1e-6); the cached step's change relative to the largest value
    0.0258 in every setting (a change check: > 0 and < 0.5)."""
    from allegro.step_cache import StepCache
    model, _ = ours_from(reference_model())
    torch.manual_seed(8)
    x, context = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 6, 32)
    cache = StepCache(threshold=10.0, start=0.0, end=1.0)       # skip whenever possible
    with torch.no_grad():
        first = model(x, torch.tensor([900.0]), context, wrappers=at(cache, 0.0))
        assert_relative(first, model(x, torch.tensor([900.0]), context), 1e-6, "first step computed")
        nearby = x + 0.01 * torch.randn_like(x)
        cached = model(nearby, torch.tensor([890.0]), context, wrappers=at(cache, 0.5))
        exact = model(nearby, torch.tensor([890.0]), context)
    assert (cache.computed, cache.skipped) == (1, 1)
    # Reusing the residual is close to, not equal to, the full computation.
    change = max_relative(cached, exact)
    assert change > 0, "the cached step equals the full computation: nothing was reused"
    assert_measured(change, 0.5, "cached step moved (change, upper)")
    never = StepCache(threshold=0.0)
    with torch.no_grad():
        for step in range(3):
            model(x, torch.tensor([900.0 - step]), context, wrappers=at(never, step / 2))
    assert (never.computed, never.skipped) == (3, 0)


def test_block_swap_keeps_the_output_and_restores_host_weights():
    """On CPU the swap degenerates to moving tensors between identical devices, but the wrapper
    plumbing (fetch, prefetch of the next block, release) runs for real."""
    from allegro.block_swap import BlockSwap
    from allegro.dit_wrappers import Wrappers
    model, _ = ours_from(reference_model())
    torch.manual_seed(9)
    x, timestep, context = torch.randn(1, 4, 3, 8, 8), torch.tensor([700.0]), torch.randn(1, 6, 32)
    with torch.no_grad():
        expected = model(x, timestep, context)
        swap = BlockSwap(model, resident=1, device="cpu")
        assert swap.streamed == [1]
        assert torch.equal(model(x, timestep, context, wrappers=Wrappers([swap])), expected)
        assert swap.fetches == [0, 1]
        assert swap.ready == {}
        swap.remove()
