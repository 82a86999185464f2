"""The Allegro PeRFlow Sampler in ComfyUI's executor, driving core SamplerCustomAdvanced / SamplerCustom
on the tiny Allegro model: the DiT gets the reference's timesteps (1000, 875, ...) and, on the first
call, the start noise unscaled; every later input, and the result, is the PeRFlow step
(allegro/perflow.py, itself checked against the reference in tests/library/test_perflow.py) of the previous
input with the DiT's own output. The model's own sampling is back in place afterwards, and a run
split with SplitSigmas (second half without noise) ends where the whole run does (same tolerance).

Measured spread of the replayed states against the ComfyUI run (fp32, 6 steps, cfg 1, states up to
~660 in magnitude with the random tiny weights): at most 6.1e-5 absolute (one float32 step at that
size) and at most 5.0e-6 of 1e-5 + |state| elementwise, under ATEN_CPU_CAPABILITY=default (avx2:
2.1e-6, avx512 with 2 threads: 9.7e-7). ComfyUI takes the velocity back out of a "denoised" latent,
which rounds differently from the reference's direct step. Tolerance 3e-5 absolute + 3e-5 relative;
each step moves the state by more than 1e-2.
"""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from allegro.perflow import PeRFlow, PeRFlowConfig

pytestmark = pytest.mark.slow

T2V = "diffusers/Allegro-tiny"
STEPS, WINDOWS, SEED = 6, 4, 5
REFERENCE = Path(__file__).parents[1] / "data" / "perflow_reference.safetensors"


def reference_timesteps(windows: int, steps: int) -> torch.Tensor:
    with safe_open(REFERENCE, "pt") as data:
        return data.get_tensor(f"timesteps/w{windows}_n{steps}").float()


def graph(sampler_node: str, prediction: str = "diff_eps", sigmas=None) -> dict:
    nodes = {
        "t5": {"class_type": "AllegroVideo_T5Loader", "inputs": {"text_encoder": T2V, "dtype": "fp32"}},
        "dit": {"class_type": "AllegroVideo_ModelLoader", "inputs": {"model_name": T2V, "weight_dtype": "fp32"}},
        "text": {"class_type": "AllegroVideo_TextEncode", "inputs": {
            "clip": ["t5", 0], "prompt": "a paper boat on a stream", "negative_prompt": "blurry",
            "use_template": False, "clean_caption": False}},
        "latent": {"class_type": "AllegroVideo_EmptyLatentVideo",
                   "inputs": {"width": 64, "height": 64, "length": 8, "batch_size": 1}},
        "perflow": {"class_type": "AllegroVideo_PeRFlowSampler",
                    "inputs": {"steps": STEPS, "windows": WINDOWS, "prediction_type": prediction}},
    }
    sigmas = sigmas or ["perflow", 1]
    if sampler_node == "SamplerCustomAdvanced":
        nodes["noise"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}}
        nodes["guider"] = {"class_type": "CFGGuider", "inputs": {
            "model": ["dit", 0], "positive": ["text", 0], "negative": ["text", 1], "cfg": 1.0}}
        nodes["sample"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["perflow", 0], "sigmas": sigmas,
            "latent_image": ["latent", 0]}}
    else:
        nodes["sample"] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["dit", 0], "add_noise": True, "noise_seed": SEED, "cfg": 1.0, "positive": ["text", 0],
            "negative": ["text", 1], "sampler": ["perflow", 0], "sigmas": sigmas, "latent_image": ["latent", 0]}}
    return nodes


class DiTCalls:
    """Every DiT call's (input latent, timestep, output)."""

    def __init__(self, comfy, monkeypatch):
        patcher = comfy.call("AllegroVideo_ModelLoader", model_name=T2V, weight_dtype="fp32")[0]
        dit_class = type(patcher.model.diffusion_model)
        original = dit_class._forward
        self.calls = []

        def recording(model, x, timestep, *args, **kwargs):
            output = original(model, x, timestep, *args, **kwargs)
            self.calls.append((x.clone(), timestep.clone(), output.clone()))
            return output
        monkeypatch.setattr(dit_class, "_forward", recording)


@pytest.mark.parametrize("sampler_node, prediction", [
    ("SamplerCustomAdvanced", "diff_eps"), ("SamplerCustomAdvanced", "ddim_eps"),
    ("SamplerCustomAdvanced", "velocity"), ("SamplerCustom", "diff_eps")])
def test_the_dit_gets_the_reference_timesteps_and_states(comfy, tiny_models, monkeypatch, sampler_node, prediction):
    from comfy.sample import prepare_noise
    dit = DiTCalls(comfy, monkeypatch)
    result = comfy.run(graph(sampler_node, prediction), targets=["sample", "dit"])
    assert result.status == "success", result.error
    patcher = result.output("dit")
    assert type(patcher.model.model_sampling).__name__ == "ModelSamplingAllegro"     # put back
    timesteps = reference_timesteps(WINDOWS, STEPS)
    assert len(dit.calls) == STEPS                                   # cfg 1: one call per step
    assert torch.equal(torch.stack([t for _, t, _ in dit.calls]).flatten(), timesteps)
    first_input = dit.calls[0][0]
    assert torch.equal(first_input, prepare_noise(torch.zeros_like(first_input), SEED))
    perflow = PeRFlow(PeRFlowConfig(num_windows=WINDOWS, prediction_type=prediction))
    following = torch.cat([timesteps[1:], torch.zeros(1)])
    for k, (state, timestep, output) in enumerate(dit.calls):
        expected = perflow.step(output, state, timestep, following[k:k + 1])
        actual = dit.calls[k + 1][0] if k + 1 < STEPS else patcher.model.latent_format.process_in(
            result.output("sample")["samples"])
        torch.testing.assert_close(actual, expected, rtol=3e-5, atol=3e-5, msg=lambda m: f"step {k}: {m}")
        assert (actual - state).abs().max() > 1e-2                     # each step moves the state


def test_diffusion_sigmas_are_refused_with_what_to_connect(comfy, tiny_models):
    nodes = graph("SamplerCustomAdvanced", sigmas=["basic", 0])
    nodes["basic"] = {"class_type": "BasicScheduler", "inputs": {
        "model": ["dit", 0], "scheduler": "normal", "steps": 4, "denoise": 1.0}}
    result = comfy.run(nodes, targets=["sample"])
    assert result.status == "error"
    message = result.error["exception_message"]
    assert "PeRFlow timesteps, whole numbers from 1000 down to 0" in message and "sigmas output of 'Allegro PeRFlow Sampler'" in message


def test_too_few_steps_for_the_windows_say_so(comfy, tiny_models):
    result = comfy.run({"perflow": {"class_type": "AllegroVideo_PeRFlowSampler",
                                    "inputs": {"steps": 3, "windows": 4, "prediction_type": "diff_eps"}}},
                       targets=["perflow"])
    assert result.status == "error"
    assert "3 steps for 4 windows. Use 4 steps or more" in result.error["exception_message"]


def test_a_split_run_continues_where_its_first_half_ended(comfy, tiny_models):
    """SplitSigmas: the first half with noise, the second from its latent without noise, equals one run."""
    whole = comfy.run(graph("SamplerCustomAdvanced"), targets=["sample"])
    nodes = graph("SamplerCustomAdvanced", sigmas=["split", 0])
    nodes["split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["perflow", 1], "step": 3}}
    nodes["quiet"] = {"class_type": "DisableNoise", "inputs": {}}
    nodes["rest"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["quiet", 0], "guider": ["guider", 0], "sampler": ["perflow", 0], "sigmas": ["split", 1],
        "latent_image": ["sample", 0]}}
    halves = comfy.run(nodes, targets=["rest"])
    assert whole.status == halves.status == "success", halves.error
    torch.testing.assert_close(halves.output("rest")["samples"], whole.output("sample")["samples"],
                               rtol=3e-5, atol=3e-5)
