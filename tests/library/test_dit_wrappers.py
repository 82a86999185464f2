"""The DiT's one seam (allegro/dit_wrappers.py): wrappers stack in their order whatever order they come in,
each stage runs through its own wrappers only, a wrapper may skip what it wraps, and a wrapper that cannot
work beside another refuses when the Wrappers is built, before the model runs."""
import pytest
import torch

from allegro.config import TransformerConfig
from allegro.dit_wrappers import INNER, MIDDLE, OUTER, DiTWrapper, Wrappers
from allegro.transformer import AllegroTransformer3D


def small_model(layers=3):
    config = TransformerConfig(num_layers=layers, num_attention_heads=2, attention_head_dim=24, caption_channels=32,
                               cross_attention_dim=48, sample_frames=2, sample_height=8, sample_width=8)
    torch.manual_seed(0)
    model = AllegroTransformer3D(config).eval()
    for tensor in model.parameters():
        torch.nn.init.normal_(tensor, std=0.1)
    return model


def call(model, wrappers=None):
    generator = torch.Generator().manual_seed(1)
    x, context = torch.randn(1, 4, 2, 8, 8, generator=generator), torch.randn(1, 6, 32, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), context, wrappers=wrappers or Wrappers())


class Recorder(DiTWrapper):
    """Logs every stage it sees, by name, into a shared list."""

    def __init__(self, name, order, log):
        self.name, self.order, self.log = name, order, log

    def wrap_blocks(self, run, call):
        self.log.append((self.name, "blocks"))
        return run(call)

    def wrap_block(self, run, block):
        self.log.append((self.name, "block", block.index))
        return run(block)

    def wrap_attention(self, run, q, k, v, mask, cross):
        self.log.append((self.name, "cross" if cross else "self"))
        return run(q, k, v, mask)


def test_wrappers_run_outermost_first_whatever_order_they_are_given_in():
    model, log = small_model(layers=2), []
    plain = call(model)
    inner, outer = Recorder("inner", INNER, log), Recorder("outer", OUTER, log)
    assert torch.equal(call(model, Wrappers([inner, outer])), plain)          # pass-through wrappers change nothing
    assert log[:2] == [("outer", "blocks"), ("inner", "blocks")]
    assert log[2:4] == [("outer", "block", 0), ("inner", "block", 0)]
    assert log[4:8] == [("outer", "self"), ("inner", "self"), ("outer", "cross"), ("inner", "cross")]
    assert log.count(("outer", "block", 1)) == 1 and len(log) == 2 + 2 * (2 + 4)


def test_a_wrapper_takes_part_only_in_the_stages_it_defines():
    class BlocksOnly(DiTWrapper):
        def wrap_blocks(self, run, call):
            return run(call)
    wrapper = BlocksOnly()
    assert [stage for stage in ("blocks", "block", "attention") if wrapper.takes_part(stage)] == ["blocks"]
    assert Wrappers([wrapper]).stages == {"blocks": [wrapper], "block": [], "attention": []}


def test_a_wrapper_may_skip_or_replace_what_it_wraps():
    model = small_model()

    class SkipMiddleBlock(DiTWrapper):
        def wrap_block(self, run, block):
            return block.tokens if block.index == 1 else run(block)

    class NoBlocks(DiTWrapper):
        def wrap_blocks(self, run, call):
            return call.tokens

    skipped = call(model, Wrappers([SkipMiddleBlock()]))
    middle, model.transformer_blocks[1] = model.transformer_blocks[1], Identity()
    try:
        assert torch.equal(call(model), skipped)
        for index in range(3):
            model.transformer_blocks[index] = Identity()
        assert torch.equal(call(model), call(small_model(), Wrappers([NoBlocks()])))
    finally:
        model.transformer_blocks[1] = middle


class Identity(torch.nn.Module):
    def forward(self, tokens, *args):
        return tokens


def test_an_incompatible_pair_is_refused_when_the_wrappers_are_built():
    class Exclusive(DiTWrapper):
        name, order = "Exclusive", MIDDLE

        def check_compatible(self, others):
            for other in others:
                if other.changes_output:
                    raise ValueError(f"{self.name} cannot run beside {other.name}: remove one of them.")

    class Mover(DiTWrapper):
        name, changes_output = "Mover", False

    Wrappers([Exclusive(), Mover()])
    with pytest.raises(ValueError, match="Exclusive cannot run beside Changer: remove one of them"):
        Wrappers([type("Changer", (DiTWrapper,), {"name": "Changer"})(), Exclusive()])


def test_the_host_options_reach_the_attention_callable_and_no_wrapper_needs_them():
    model, seen = small_model(layers=1), []
    plain = call(model)

    def attention(q, k, v, mask=None, options=None):
        seen.append(options)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    model.attention = attention
    options = {"host": 1}
    assert torch.equal(call(model, Wrappers(options=options)), plain)
    assert seen == [options, options]
    call(model)
    assert seen[2:] == [None, None]
