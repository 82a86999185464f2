"""The Allegro PAB node in ComfyUI's executor: it changes the sampled video and skips attention calls
(counted at ComfyUI's attention), is exact when off, works with a LoRA in either order, with quantised
weights, and beside Allegro Multi-GPU (every rank skips on its share; the same latents as one process)."""
import pytest
import torch

from error_matrix_support import T2V, t2v
from numerics import assert_relative

from multi_gpu_support import parallel_module, stop_workers_afterwards  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.slow

STEPS = 10
OFF = {"spatial_skip_range": 1, "spatial_timestep_start": 100, "spatial_timestep_end": 800,
       "cross_skip_range": 1, "cross_timestep_start": 100, "cross_timestep_end": 800}


def graph(model=T2V, pab: dict | None = None, lora: str | None = None, lora_first=True) -> dict:
    """T2V with `steps` Euler steps over the whole timestep range; PAB and a LoRA between loader and sampler."""
    nodes = t2v(model=model, steps=STEPS)
    nodes["sample"]["inputs"].update(sampler_name="euler", scheduler="normal")
    chain = []
    if pab is not None:
        chain.append(("pab", {"class_type": "AllegroVideo_PAB", "inputs": {**pab}}))
    if lora is not None:
        step = ("lora", {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": lora, "strength_model": 1.0}})
        chain.insert(0 if lora_first else len(chain), step)
    source = ["dit", 0]
    for key, node in chain:
        node["inputs"]["model"] = source
        nodes[key], source = node, [key, 0]
    nodes["sample"]["inputs"]["model"] = source
    return nodes


@pytest.fixture
def attention_calls(monkeypatch):
    """Counts the DiT's attention products at ComfyUI's attention (what comfy_attention ends in)."""
    import comfy.ldm.modules.attention as attention
    calls = []
    exact = attention.attention_pytorch

    def counted(q, k, v, heads, *args, **kwargs):
        if kwargs.get("skip_reshape"):
            calls.append(q.shape)
        return exact(q, k, v, heads, *args, **kwargs)
    monkeypatch.setattr(attention, "optimized_attention", counted)
    return calls


def run(comfy, nodes, targets=("sample",)):
    result = comfy.run(nodes, targets=list(targets))
    assert result.status == "success", result.error
    return result


def test_pab_changes_the_video_and_skips_attention_calls(comfy, tiny_models, attention_calls):
    plain = run(comfy, graph()).output("sample")["samples"]
    plain_calls = len(attention_calls)
    assert plain_calls == STEPS * 2 * 2                   # one CFG-batched call a step, 2 blocks, 2 attentions
    attention_calls.clear()
    off = run(comfy, graph(pab=OFF)).output("sample")["samples"]
    assert torch.equal(off, plain) and len(attention_calls) == plain_calls
    attention_calls.clear()
    result = run(comfy, graph(pab={**OFF, "spatial_skip_range": 2, "cross_skip_range": 3}), ("sample", "pab"))
    pab = result.output("pab").model_options["transformer_options"]["allegro_pab"]
    skipped = plain_calls - len(attention_calls)
    assert skipped > 0 and pab.skipped == skipped and pab.computed == len(attention_calls)
    relative = ((result.output("sample")["samples"] - plain).norm() / plain.norm()).item()
    assert relative > 1e-4, relative
    # A second run of the same graph starts afresh (the node's output is cached, its state is not reused).
    attention_calls.clear()
    again = run(comfy, graph(pab={**OFF, "spatial_skip_range": 2, "cross_skip_range": 3}))
    assert torch.equal(again.output("sample")["samples"], result.output("sample")["samples"])
    assert plain_calls - len(attention_calls) == skipped


@pytest.fixture(scope="module")
def lora(base_dir) -> str:
    """A LoRA in ComfyUI's generic key format over the tiny DiT's attentions, strong enough to matter."""
    from safetensors.torch import save_file
    generator = torch.Generator().manual_seed(12)
    tensors = {}
    for layer in ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn1.to_v", "transformer_blocks.1.attn2.to_q"):
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(48, 4, generator=generator)
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(4, 48, generator=generator) * 0.3
        tensors[f"diffusion_model.{layer}.alpha"] = torch.tensor(4.0)
    (base_dir / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file(tensors, base_dir / "models" / "loras" / "pab_test_lora.safetensors")
    return "pab_test_lora.safetensors"


def test_pab_with_a_lora_in_either_order(comfy, tiny_models, lora, attention_calls):
    settings = {**OFF, "spatial_skip_range": 2}
    with_lora = run(comfy, graph(lora=lora)).output("sample")["samples"]
    pab_only = run(comfy, graph(pab=settings)).output("sample")["samples"]
    attention_calls.clear()
    lora_then_pab = run(comfy, graph(pab=settings, lora=lora, lora_first=True)).output("sample")["samples"]
    assert len(attention_calls) < STEPS * 2 * 2
    pab_then_lora = run(comfy, graph(pab=settings, lora=lora, lora_first=False)).output("sample")["samples"]
    assert torch.equal(lora_then_pab, pab_then_lora)             # the wrapper survives the LoRA's clone
    # Both matter (measured: 3.9e-5 from PAB beside the LoRA; the tiny random model's latents grow to ~1e3,
    # so relative moves are small; both sides are one process's same ops, so any difference is the feature's).
    for other in (with_lora, pab_only):
        assert ((lora_then_pab - other).norm() / other.norm()).item() > 1e-6


@pytest.mark.parametrize("fmt", ["Q4_K", "fp8_scaled"])
def test_pab_on_quantised_weights(comfy, tiny_models, quantized_models, fmt, attention_calls):
    name = quantized_models["t2v"][fmt]
    plain = run(comfy, graph(model=name)).output("sample")["samples"]
    calls = len(attention_calls)
    attention_calls.clear()
    assert torch.equal(run(comfy, graph(model=name, pab=OFF)).output("sample")["samples"], plain)
    attention_calls.clear()
    cached = run(comfy, graph(model=name, pab={**OFF, "spatial_skip_range": 3})).output("sample")["samples"]
    assert 0 < len(attention_calls) < calls
    assert torch.isfinite(cached).all() and not torch.equal(cached, plain)


@pytest.mark.parametrize("cfg_parallel", [False, True], ids=["seq2", "cfg2"])
def test_pab_beside_multi_gpu_skips_on_every_rank_and_equals_one_process(comfy, tiny_models, cfg_parallel):
    """Two runs on the same warm rank group (the second with another seed: every rank's copy starts afresh).
    Measured: 0 max relative difference to PAB alone (sequence 2 and CFG 2: each rank
    computes its share of the same products); bound 1e-5, the multi-GPU tests' bound."""
    settings = {**OFF, "spatial_skip_range": 2, "cross_skip_range": 3}
    alone_nodes = graph(pab=settings)
    nodes = graph(pab=settings)
    nodes["multi"] = {"class_type": "AllegroVideo_MultiGPU", "inputs": {
        "model": ["pab", 0], "gpus": 2, "cfg_parallel": cfg_parallel, "devices": ""}}
    nodes["sample"]["inputs"]["model"] = ["multi", 0]
    for seed in (3, 4):
        for graph_nodes in (alone_nodes, nodes):
            graph_nodes["sample"]["inputs"]["seed"] = seed
        alone = comfy.run(alone_nodes, targets=["sample", "pab"], fresh=False)
        assert alone.status == "success", alone.error
        pab = alone.output("pab").model_options["transformer_options"]["allegro_pab"]
        counts = (pab.computed, pab.skipped)
        assert counts[1] > 0 and pab.ranks == {}
        result = comfy.run(nodes, targets=["sample", "multi"], fresh=False)
        assert result.status == "success", result.error
        # The PAB the sampler ran: the Multi-GPU node's clone of the MODEL holds its own copy (ComfyUI deep-copies
        # model_options on a clone).
        pab = result.output("multi").model_options["transformer_options"]["allegro_pab"]
        label = f"PAB + Multi-GPU ({'CFG' if cfg_parallel else 'sequence'} 2) vs PAB alone, seed {seed}"
        value = assert_relative(result.output("sample")["samples"], alone.output("sample")["samples"], 1e-5, label)
        print(f"seed {seed}: max relative {value:.2e}; per rank [computed, skipped]: {pab.ranks}")
        # Rank 0 counts as one process does; the worker rank skipped as many attentions of its share.
        assert (pab.computed, pab.skipped) == counts and pab.ranks == {0: list(counts), 1: list(counts)}
        group = parallel_module()._group
        assert group.layout.cfg == (2 if cfg_parallel else 1) and group.last_reports == [(0, 2), (0, 2)]


def test_bad_timestep_range_is_refused_with_what_to_do(comfy, tiny_models):
    result = comfy.run(graph(pab={**OFF, "spatial_timestep_start": 900, "spatial_timestep_end": 100}),
                       targets=["sample"])
    assert result.status == "error" and result.error["node_type"] == "AllegroVideo_PAB"
    assert "Swap the two values" in result.error["exception_message"]
