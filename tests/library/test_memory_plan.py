"""The VRAM arithmetic (allegro/memory_plan.py) from the real tensor shapes: weight bytes per format
match the released parameter count and the files the converter writes; the activation factor is what
PyTorch's profiler measures in a block; plans are consistent."""
import pytest
import torch

from allegro.config import TransformerConfig
from allegro.memory_plan import (ACTIVATION_WIDTHS, FORMATS, GB, activation_bytes, describe_swap, plan, tokens,
                                 weight_bytes)

RELEASED_PARAMETERS = 2_771_907_856      # rhymes-ai/Allegro's transformer (see REFERENCE.md)


def test_weight_bytes_from_the_released_shapes():
    sizes = {fmt: weight_bytes(fmt) for fmt in FORMATS}
    assert sizes["bf16"].resident == sizes["bf16"].file == 2 * RELEASED_PARAMETERS
    assert sizes["fp32"].resident == 4 * RELEASED_PARAMETERS
    assert sizes["fp8_e4m3fn"].resident == RELEASED_PARAMETERS
    order = ["Q4_K", "Q5_K", "Q6_K", "fp8_scaled", "Q8_0", "bf16"]
    assert [sizes[f].resident for f in order] == sorted(sizes[f].resident for f in order)
    # Quantised blocks at the formats' bits per weight; everything outside the blocks stays 16-bit.
    block_parameters = (sizes["bf16"].block // 2)
    assert sizes["Q4_K"].block == pytest.approx(block_parameters * 4.5 / 8 + 6 * 2304 * 2 + 10 * 2304 * 2, rel=0.01)
    assert sizes["Q8_0"].outside_blocks == sizes["bf16"].outside_blocks
    for fmt in order:
        assert sizes[fmt].outside_blocks + 32 * sizes[fmt].block == sizes[fmt].resident


@pytest.mark.slow
def test_weight_bytes_match_the_converters_files(base_dir, quantized_models):
    """The file sizes the arithmetic predicts for the width-768 test model are those of the files
    scripts/convert_weights.py wrote (plus the format's header)."""
    config = TransformerConfig(num_layers=2, num_attention_heads=8, attention_head_dim=96, caption_channels=32,
                               cross_attention_dim=768)
    folder = base_dir / "models" / "diffusion_models"
    for fmt, name in quantized_models["t2v"].items():
        if fmt == "fp32":
            continue
        predicted = weight_bytes(fmt, config, source=torch.float32).file
        actual = (folder / name).stat().st_size
        assert 0 <= actual - predicted < 64 * 1024, (fmt, actual, predicted)


def test_activation_factor_is_what_the_profiler_measures_in_a_block():
    """Peak memory allocated inside one block above its input, in units of one [tokens, width]
    activation (bf16): the plan counts the input plus this peak."""
    from torch.profiler import ProfilerActivity, profile
    from allegro.rope import RotaryEmbedding3D
    from allegro.transformer import TransformerBlock, sdpa_attention
    config = TransformerConfig(num_attention_heads=4, attention_head_dim=48, cross_attention_dim=192)
    block = TransformerBlock(config, torch.nn, dtype=torch.bfloat16).eval()
    for tensor in block.parameters():
        torch.nn.init.normal_(tensor, std=0.02)
    grid, width = (2, 8, 16), config.inner_dim
    count = grid[0] * grid[1] * grid[2]
    x, context = torch.randn(1, count, width, dtype=torch.bfloat16), torch.randn(1, 512, width, dtype=torch.bfloat16)
    modulation = torch.randn(1, 6 * width, dtype=torch.bfloat16)
    bias = torch.zeros(1, 1, 1, 512, dtype=torch.bfloat16)
    bias[..., 100:] = -10000.0
    rope = RotaryEmbedding3D(config.attention_head_dim, grid, (2.2, 2.0, 2.0))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        block(x, context, modulation, bias, rope, sdpa_attention, sdpa_attention)
    events = sorted((e for e in profiler.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    measured = peak / (count * width * 2)
    assert ACTIVATION_WIDTHS - 1.5 <= measured <= ACTIVATION_WIDTHS - 1 + 0.05, measured


def test_activations_at_the_released_size():
    assert tokens(88, 720, 1280) == 22 * 45 * 80 == 79_200
    one = activation_bytes(88, 720, 1280, batch=1)
    assert one == pytest.approx(ACTIVATION_WIDTHS * 79_200 * 2304 * 2, rel=0.02)
    assert activation_bytes(88, 720, 1280, batch=2) == pytest.approx(2 * one, rel=0.02)
    assert activation_bytes(40, 368, 640) < one / 4


def test_plans_are_consistent():
    for fmt in FORMATS:
        plans = [plan(fmt, gb * GB) for gb in (4, 8, 12, 16, 24, 48)]
        assert [p.resident_blocks for p in plans] == sorted(p.resident_blocks for p in plans)
        for gb, p in zip((4, 8, 12, 16, 24, 48), plans):
            if p.fits:
                assert p.total <= gb * GB and p.total == pytest.approx(
                    1 * GB + p.weights + p.buffers + p.activations, abs=0.2 * GB)   # + one dequantised layer
    assert plan("Q4_K", 8 * GB).resident_blocks == 32            # the goal: an 8 GB GPU runs the full-size video
    assert 0 <= plan("bf16", 8 * GB).resident_blocks < 32          # bf16 needs block swap there
    assert plan("bf16", 24 * GB).resident_blocks == 32
    assert plan("bf16", 2 * GB).resident_blocks == -1


def test_the_block_swap_text():
    sizes = weight_bytes("Q4_K")
    text = describe_swap(sizes.block, sizes.outside_blocks, 32, 8, 1)
    assert "8 of 32 blocks resident" in text and "24 streamed" in text and "88x720x1280" in text
    assert f"{24 * sizes.block / GB:.2f} GB host -> GPU" in text
    assert "all 32 blocks resident" in describe_swap(sizes.block, sizes.outside_blocks, 32, 40, 1)
