"""Allegro Multi-GPU in ComfyUI's executor (in-process, --cpu: the ranks are CPU processes over gloo):
the tiny T2V and TI2V graphs give the single-process latents with CFG parallel, sequence parallel and both,
through the Allegro sampler and the stock KSampler; bad settings are refused with what to do.

Measured spread (avx512, 1 thread, ComfyUI 0.3.75, 0.33.0 and 0.8.0; docs/numerics-spread.md): 0 (norm-relative)
in every comparison against TOLERANCE = 1e-5: test_t2v_equals_one_process (cfg2, seq2),
test_cfg_and_sequence_parallel_together_t2v_ti2v_and_ksampler, test_the_workers_stay_up_and_keep_the_model_between_runs,
test_cancel_in_the_middle_of_a_block_stops_every_rank_and_the_workers_go_on,
test_a_worker_killed_while_idle_is_replaced_by_the_next_prompt, test_the_step_cache_skips_steps_on_rank_0_without_the_workers;
test_the_workers_compute_with_the_patched_weights_rank_0_uses records 1.14 as well, its change check (the LoRA moves
the video, > 1e-3), beside 0 for its equalities. Not yet measured under default/avx2 kernels or 2 threads."""
import os
import re
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from error_matrix_support import T2V, TI2V, empty_video, t2v, ti2v
from numerics import norm_relative, record

from multi_gpu_support import parallel_module, stop_workers_afterwards  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5        # measured 0 in every comparison (avx512, 1 thread): see the module docstring
STEPS = 3


def with_multi_gpu(graph: dict, gpus: int, cfg_parallel: bool, devices="") -> dict:
    """The graph with 'Allegro Multi-GPU' between the model loader and the sampler."""
    graph = {key: {**node, "inputs": dict(node["inputs"])} for key, node in graph.items()}
    graph["multi"] = {"class_type": "AllegroVideo_MultiGPU", "inputs": {
        "model": ["dit", 0], "gpus": gpus, "cfg_parallel": cfg_parallel, "devices": devices}}
    graph["sample"]["inputs"]["model"] = ["multi", 0]
    return graph


def stock_sampler(graph: dict) -> dict:
    """The same graph sampled by core KSampler."""
    inputs = graph["sample"]["inputs"]
    graph = dict(graph)
    graph["sample"] = {"class_type": "KSampler", "inputs": {
        "model": inputs["model"], "positive": inputs["positive"], "negative": inputs["negative"],
        "latent_image": inputs["latent"], "seed": 7, "steps": STEPS, "cfg": 7.5, "sampler_name": "euler",
        "scheduler": "normal", "denoise": 1.0}}
    return graph


def sampled(comfy, graph) -> torch.Tensor:
    result = comfy.run(graph, targets=["sample"])
    assert result.status == "success", result.error
    return result.output("sample")["samples"]


def relative(a, b) -> float:
    """‖a − b‖ / ‖b‖, recorded for the spread table (tests/support/numerics.py)."""
    value = norm_relative(a, b)
    record(value, "norm")
    return value


@pytest.fixture(scope="module")
def first_frame(base_dir) -> dict:
    pixels = np.linspace(0, 255, 48 * 80 * 3).reshape(48, 80, 3).astype(np.uint8)
    Image.fromarray(pixels).save(base_dir / "input" / "parallel_first.png")
    return {"image": {"class_type": "LoadImage", "inputs": {"image": "parallel_first.png"}}}


def t2v_graph():
    # 16 frames of 64x48: 4 x 3 x 4 = 48 tokens per video, in a batch of 2 videos.
    return t2v(model=T2V, latent=empty_video(width=64, height=48, length=16, batch_size=2), steps=STEPS)


@pytest.mark.parametrize("gpus,cfg_parallel", [(2, True), (2, False)], ids=["cfg2", "seq2"])
def test_t2v_equals_one_process(comfy, tiny_models, gpus, cfg_parallel):
    single = sampled(comfy, t2v_graph())
    parallel = sampled(comfy, with_multi_gpu(t2v_graph(), gpus, cfg_parallel))
    assert relative(parallel, single) <= TOLERANCE
    group = parallel_module()._group
    assert group.alive() and group.layout.world == gpus
    # ComfyUI batched both halves of CFG for both videos: 4 rows, every rank ran both blocks.
    assert group.last_reports == [(0, 2)] * gpus


def test_cfg_and_sequence_parallel_together_t2v_ti2v_and_ksampler(comfy, tiny_models, first_frame):
    single = {"t2v": sampled(comfy, t2v_graph()),
              "ti2v": sampled(comfy, ti2v(model=TI2V, image=first_frame, width=64, height=48, length=16)),
              "ksampler": sampled(comfy, stock_sampler(t2v_graph()))}
    parallel = {"t2v": sampled(comfy, with_multi_gpu(t2v_graph(), 4, True)),
                "ti2v": sampled(comfy, with_multi_gpu(ti2v(model=TI2V, image=first_frame, width=64, height=48,
                                                           length=16), 4, True)),
                "ksampler": sampled(comfy, stock_sampler(with_multi_gpu(t2v_graph(), 4, True)))}
    for name, expected in single.items():
        assert relative(parallel[name], expected) <= TOLERANCE, name
    group = parallel_module()._group
    assert (group.layout.cfg, group.layout.seq) == (2, 2)


def test_the_workers_stay_up_and_keep_the_model_between_runs(comfy, tiny_models):
    sampled(comfy, with_multi_gpu(t2v_graph(), 2, True))
    group = parallel_module()._group
    pids, key, calls = [w.pid for w in group.workers], group.loaded_key, group.call_id
    # The next prompt, as a server runs it: the loader's MODEL comes from ComfyUI's cache, only the seed changed.
    graph = with_multi_gpu(t2v_graph(), 2, True)
    graph["sample"]["inputs"]["seed"] = 8
    result = comfy.run(graph, targets=["sample"], fresh=False)
    assert result.status == "success", result.error
    assert parallel_module()._group is group and [w.pid for w in group.workers] == pids
    assert group.loaded_key == key and group.call_id == calls + STEPS      # the weights were not sent again
    single = t2v_graph()
    single["sample"]["inputs"]["seed"] = 8
    assert relative(result.output("sample")["samples"], sampled(comfy, single)) <= TOLERANCE


def test_cancel_in_the_middle_of_a_block_stops_every_rank_and_the_workers_go_on(comfy, tiny_models, monkeypatch):
    """Cancel pressed while rank 0 is inside its first block (at the cross-attention, before the MLP, where
    newer ComfyUI's layers would raise at once): every rank stops at the next block boundary, the prompt ends
    as interrupted, and the same workers give the exact result next time."""
    from comfy import model_management
    graph = with_multi_gpu(t2v_graph(), 4, True)
    first = comfy.run(graph, targets=["sample"])                              # loads the model and the workers
    assert first.status == "success", first.error
    group = parallel_module()._group
    pids = [w.pid for w in group.workers]
    diffusion_model = first.output("dit").model.diffusion_model
    attention, calls = diffusion_model.attention, []

    def cancel_during_the_first_cross_attention(q, k, v, mask=None):
        calls.append(mask is not None)
        if calls.count(True) == 1 and mask is not None:
            model_management.interrupt_current_processing(True)
        return attention(q, k, v, mask)

    monkeypatch.setattr(diffusion_model, "attention", cancel_during_the_first_cross_attention)
    graph["sample"]["inputs"]["seed"] = 9
    result = comfy.run(graph, targets=["sample"], fresh=False)
    assert result.status == "interrupted", result.error
    assert group.last_reports[:2] == [(1, 1), (1, 1)]       # rank 0's group stopped together before block 1
    # The other group read the stop from the store at its next block, or had already finished: either way together.
    assert group.last_reports[2] == group.last_reports[3] in ((1, 0), (1, 1), (0, 2))
    assert parallel_module()._group is group and group.alive() and [w.pid for w in group.workers] == pids
    monkeypatch.setattr(diffusion_model, "attention", attention)
    again = comfy.run(graph, targets=["sample"], fresh=False)
    assert again.status == "success", again.error
    single = t2v_graph()
    single["sample"]["inputs"]["seed"] = 9
    assert relative(again.output("sample")["samples"], sampled(comfy, single)) <= TOLERANCE


def test_a_worker_killed_while_idle_is_replaced_by_the_next_prompt(comfy, tiny_models):
    """The next prompt queued right after an idle worker was killed (before its process is reaped) starts a new
    worker and gives the exact result, instead of failing on the dead one."""
    graph = with_multi_gpu(t2v_graph(), 2, True)
    sampled(comfy, graph)
    group = parallel_module()._group
    killed = [w.pid for w in group.workers]
    os.kill(killed[0], signal.SIGKILL)
    graph["sample"]["inputs"]["seed"] = 10
    result = comfy.run(graph, targets=["sample"], fresh=False)
    assert result.status == "success", result.error
    fresh = parallel_module()._group
    assert fresh is not group and [w.pid for w in fresh.workers] != killed and fresh.alive()
    single = t2v_graph()
    single["sample"]["inputs"]["seed"] = 10
    assert relative(result.output("sample")["samples"], sampled(comfy, single)) <= TOLERANCE


@pytest.fixture(scope="module")
def lora(base_dir) -> str:
    """A LoRA in ComfyUI's generic key format over a few of the tiny DiT's layers, strong enough to matter."""
    from safetensors.torch import save_file
    generator = torch.Generator().manual_seed(11)
    tensors = {}
    for layer, (rows, cols) in {"transformer_blocks.0.attn1.to_q": (48, 48), "transformer_blocks.1.ff.net.2": (48, 192),
                                "transformer_blocks.1.attn2.to_v": (48, 48)}.items():
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(rows, 4, generator=generator)
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(4, cols, generator=generator) * 0.3
        tensors[f"diffusion_model.{layer}.alpha"] = torch.tensor(4.0)
    (base_dir / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file(tensors, base_dir / "models" / "loras" / "parallel_test_lora.safetensors")
    return "parallel_test_lora.safetensors"


def test_the_workers_compute_with_the_patched_weights_rank_0_uses(comfy, tiny_models, lora):
    """A LoRA applied before the node reaches every rank; the same model without it makes them reload."""
    def with_lora(graph):
        graph["lora"] = {"class_type": "LoraLoaderModelOnly",
                         "inputs": {"model": ["dit", 0], "lora_name": lora, "strength_model": 1.0}}
        for node in graph.values():
            if node["inputs"].get("model") == ["dit", 0] and node is not graph["lora"]:
                node["inputs"]["model"] = ["lora", 0]
        return graph

    plain = sampled(comfy, t2v_graph())
    patched = sampled(comfy, with_lora(t2v_graph()))
    assert relative(patched, plain) > 1e-3                  # the LoRA changes the video
    assert relative(sampled(comfy, with_lora(with_multi_gpu(t2v_graph(), 2, False))), patched) <= TOLERANCE
    group = parallel_module()._group
    patched_key = group.loaded_key
    # The same loaded model without the LoRA (the loader's output stays cached): the workers reload.
    result = comfy.run(with_multi_gpu(t2v_graph(), 2, False), targets=["sample"], fresh=False)
    assert result.status == "success", result.error
    assert group.loaded_key != patched_key and group.loaded_key[0] == patched_key[0]
    assert relative(result.output("sample")["samples"], plain) <= TOLERANCE


def test_the_step_cache_skips_steps_on_rank_0_without_the_workers(comfy, tiny_models):
    def cached(graph):
        graph["cache"] = {"class_type": "AllegroVideo_StepCache",
                          "inputs": {"model": list(graph["sample"]["inputs"]["model"]), "threshold": 0.5,
                                     "start": 0.1, "end": 0.9}}
        graph["sample"]["inputs"]["model"] = ["cache", 0]
        graph["sample"]["inputs"]["steps"] = 10
        return graph

    alone = sampled(comfy, cached(t2v_graph()))
    sampled(comfy, with_multi_gpu(t2v_graph(), 2, True))            # the workers for this layout are up
    group = parallel_module()._group
    calls_before = group.call_id
    result = comfy.run(cached(with_multi_gpu(t2v_graph(), 2, True)), targets=["sample", "cache"])
    assert result.status == "success", result.error
    assert relative(result.output("sample")["samples"], alone) <= TOLERANCE
    counters = result.output("cache").model_options["transformer_options"]["allegro_step_cache"]
    assert parallel_module()._group is group and counters.skipped > 0
    assert group.call_id - calls_before == counters.computed        # a skipped step never reached the workers


def test_one_gpu_is_the_model_unchanged(comfy, tiny_models):
    assert torch.equal(sampled(comfy, with_multi_gpu(t2v_graph(), 1, True)), sampled(comfy, t2v_graph()))


@pytest.mark.parametrize("gpus,cfg_parallel,devices,message", [
    (3, True, "", r"needs an even count, not 3\. Use 2 or 4 GPUs, or turn cfg_parallel off"),
    (3, False, "", r"2 attention heads cannot be split evenly over 3 sequence-parallel ranks: use 2 ranks"),
    (2, True, "cpu, cpu", r"'devices' lists 2 device\(s\) but 2 GPUs need 1 besides ComfyUI's cpu"),
], ids=["odd count with cfg", "heads", "devices"])
def test_settings_that_cannot_work_are_refused_with_what_to_do(comfy, tiny_models, gpus, cfg_parallel, devices,
                                                               message):
    result = comfy.run(with_multi_gpu(t2v_graph(), gpus, cfg_parallel, devices), targets=["sample"])
    assert result.status == "error"
    assert result.error["node_type"] == "AllegroVideo_MultiGPU"
    assert re.search(message, result.error["exception_message"]), result.error["exception_message"]


def test_block_patches_are_refused_on_the_rank_group(comfy, tiny_models):
    graph = with_multi_gpu(t2v_graph(), 2, False)
    graph["slg"] = {"class_type": "SkipLayerGuidanceDiT", "inputs": {
        "model": ["multi", 0], "double_layers": "1", "single_layers": "", "scale": 3.0, "start_percent": 0.0,
        "end_percent": 1.0, "rescaling_scale": 0.0}}
    graph["sample"]["inputs"]["model"] = ["slg", 0]
    result = comfy.run(graph, targets=["sample"])
    assert result.status == "error"
    assert "cannot run on the 'Allegro Multi-GPU' rank group" in str(result.error)
