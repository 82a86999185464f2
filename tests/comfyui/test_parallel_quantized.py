"""Allegro Multi-GPU on quantised models, in ComfyUI's executor (--cpu: the ranks are CPU processes over gloo):
the workers build the same quantised layers rank 0 runs (GGUF Q8_0 and Q4_K, scaled fp8) from the stored bytes,
so sequence parallel and CFG parallel give the single-process latent of the same model; a LoRA reaches them
applied to the dequantised weight, as rank 0 applies it."""

import pytest
import torch

from allegro_devtools.graphs import t2v_graph

from multi_gpu_support import parallel_module, stop_workers_afterwards  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.slow

# fp32 compute, each rank dequantising the same bytes with the same ops: measured 0 (bit-identical) for Q8_0, Q4_K
# and fp8_scaled, CFG and sequence parallel, LoRA included (this machine's AVX512 kernels); the bound is the
# multi-GPU tests' 1e-5, for kernels that split rows differently.
TOLERANCE = 1e-5
STEPS = 2


def with_multi_gpu(graph: dict, cfg_parallel: bool) -> dict:
    graph = {key: {**node, "inputs": dict(node["inputs"])} for key, node in graph.items()}
    graph["multi"] = {"class_type": "AllegroVideo_MultiGPU", "inputs": {
        "model": graph["sample"]["inputs"]["model"], "gpus": 2, "cfg_parallel": cfg_parallel, "devices": ""}}
    graph["sample"]["inputs"]["model"] = ["multi", 0]
    return graph


def sampled(comfy, graph) -> torch.Tensor:
    result = comfy.run(graph, targets=["sample"])
    assert result.status == "success", result.error
    return result.output("sample")["samples"]


def relative(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("fmt", ["Q8_0", "Q4_K", "fp8_scaled"])
def test_sequence_and_cfg_parallel_on_a_quantised_model_equal_one_process(comfy, quantized_models, fmt):
    graph = t2v_graph(quantized_models["t2v"][fmt], steps=STEPS)
    single = sampled(comfy, graph)
    for cfg_parallel in (False, True):
        assert relative(sampled(comfy, with_multi_gpu(graph, cfg_parallel)), single) <= TOLERANCE, cfg_parallel
        group = parallel_module()._group
        assert group.alive() and group.last_reports == [(0, 2), (0, 2)]


@pytest.fixture(scope="module")
def wide_lora(base_dir) -> str:
    """A LoRA over three of the width-768 model's layers (quantised in every format), strong enough to matter."""
    from safetensors.torch import save_file
    generator = torch.Generator().manual_seed(13)
    tensors = {}
    for layer, (rows, cols) in {"transformer_blocks.0.attn1.to_q": (768, 768), "transformer_blocks.1.ff.net.2": (768, 3072),
                                "transformer_blocks.1.attn2.to_v": (768, 768)}.items():
        tensors[f"diffusion_model.{layer}.lora_up.weight"] = torch.randn(rows, 4, generator=generator) * 0.05
        tensors[f"diffusion_model.{layer}.lora_down.weight"] = torch.randn(4, cols, generator=generator) * 0.05
        tensors[f"diffusion_model.{layer}.alpha"] = torch.tensor(4.0)
    (base_dir / "models" / "loras").mkdir(parents=True, exist_ok=True)
    save_file(tensors, base_dir / "models" / "loras" / "wide_test_lora.safetensors")
    return "wide_test_lora.safetensors"


@pytest.mark.parametrize("fmt", ["Q4_K", "fp8_scaled"])
def test_a_lora_on_a_quantised_model_reaches_the_workers(comfy, quantized_models, wide_lora, fmt):
    name = quantized_models["t2v"][fmt]
    plain = sampled(comfy, t2v_graph(name, steps=STEPS))
    patched = sampled(comfy, t2v_graph(name, lora=wide_lora, steps=STEPS))
    assert relative(patched, plain) > 1e-3                      # the LoRA changes the video
    parallel = sampled(comfy, with_multi_gpu(t2v_graph(name, lora=wide_lora, steps=STEPS), cfg_parallel=False))
    assert relative(parallel, patched) <= TOLERANCE
