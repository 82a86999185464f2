"""allegro/perflow.py equals the seed's PeRFlowScheduler (branch `perflow`) step for step.

The reference cannot be imported here, so tests/data/perflow_reference.safetensors holds what it
produced (see tests/data/README.md): its timesteps for many (windows, steps) pairs, and for 13 runs
(every prediction type; 1, 3, 4, 5 and 16 windows; 4 to 16 steps) the latent after each step, all
starting from the same stored latent and fed the same stored "model outputs" (one per step).

Measured spread of our latents against the stored reference (made under AVX512), fp32, with
ATEN_CPU_CAPABILITY=avx2 or avx512, 1 or 2 threads: 0 (the same float32 ops in the same order).
With ATEN_CPU_CAPABILITY=default: at most 9.2e-5 absolute, 3.0e-5 relative (latents up to ~200 on
these random outputs). The cause is the training table itself: torch.linspace's scalar kernel gives
betas 1.9e-9 apart from the vector kernels, so alpha_bar differs by up to 2.3e-7 relative, which
1 - gamma^2 in a window's coefficients amplifies. The reference itself, run under `default`, differs
from its AVX512 run by up to 1.1e-4 absolute, and ours equals it bit for bit under each capability. Tolerance: 1e-4 relative + 1e-5 absolute, three times that spread; a wrong window, coefficient
or time step moves a step by more than 1e-3.
"""
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from allegro.perflow import PeRFlow, PeRFlowConfig, perflow_timesteps

DATA = Path(__file__).parents[1] / "data" / "perflow_reference.safetensors"


@pytest.fixture(scope="module")
def reference() -> dict:
    with safe_open(DATA, "pt") as data:
        tensors = {key: data.get_tensor(key) for key in data.keys()}
        tensors["runs"] = json.loads(data.metadata()["runs"])
    return tensors


def timestep_cases(reference) -> list[tuple[int, int]]:
    return [tuple(int(part[1:]) for part in key.split("/")[1].split("_")) for key in reference if
            key.startswith("timesteps/")]


def test_timesteps_equal_the_reference(reference):
    cases = timestep_cases(reference)
    assert len(cases) > 50
    for windows, steps in cases:
        expected = reference[f"timesteps/w{windows}_n{steps}"].long()
        assert torch.equal(perflow_timesteps(steps, PeRFlowConfig(num_windows=windows)), expected), (windows, steps)


def test_every_step_equals_the_reference(reference):
    start, outputs = reference["latent0"], reference["model_outputs"]
    assert len(reference["runs"]) == 13
    for windows, prediction, steps in reference["runs"]:
        perflow = PeRFlow(PeRFlowConfig(num_windows=windows, prediction_type=prediction))
        timesteps = perflow_timesteps(steps, perflow.config)
        expected = reference[f"latents/{prediction}/w{windows}_n{steps}"]
        sample = start.clone()
        for k, timestep in enumerate(timesteps):
            following = timesteps[k + 1] if k + 1 < steps else torch.tensor(0)
            sample = perflow.step(outputs[k], sample, timestep, following)
            torch.testing.assert_close(sample, expected[k], rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{prediction}, {windows} windows, {steps} steps, step {k}: {m}")


def test_float_timesteps_and_batches_step_like_integer_scalars(reference):
    """ComfyUI hands the timestep as float32, one per batch item; the step must not change."""
    perflow = PeRFlow(PeRFlowConfig())
    sample = reference["latent0"].repeat(2, 1, 1, 1, 1)
    output = reference["model_outputs"][0].repeat(2, 1, 1, 1, 1)
    for timestep, following in ((1000, 875), (750, 625), (250, 0), (125, 0)):
        scalar = perflow.step(output[:1], sample[:1], torch.tensor(timestep), torch.tensor(following))
        batched = perflow.step(output, sample, torch.full((2,), float(timestep)), torch.full((2,), float(following)))
        assert torch.equal(batched, scalar.repeat(2, 1, 1, 1, 1))


def test_a_time_on_a_window_edge_belongs_to_the_window_starting_there():
    perflow = PeRFlow(PeRFlowConfig(num_windows=4))
    start, end = perflow.window(torch.tensor([1.0, 0.875, 0.75, 0.7501, 0.7499, 0.25, 0.001]))
    assert start.tolist() == [1.0, 1.0, 0.75, 0.75, 0.75, 0.25, 0.25]
    assert end.tolist() == [0.75, 0.75, 0.5, 0.5, 0.5, 0.0, 0.0]


def test_the_prediction_types_read_the_same_output_differently(reference):
    """A guard that the runs above compare something: the three rules give far-apart steps."""
    sample, output = reference["latent0"], reference["model_outputs"][0]
    steps = [PeRFlow(PeRFlowConfig(prediction_type=p)).step(output, sample, torch.tensor(875), torch.tensor(750))
             for p in ("diff_eps", "ddim_eps", "velocity")]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert (steps[a] - steps[b]).abs().max() > 1e-3


def test_bad_settings_say_what_to_use():
    with pytest.raises(ValueError, match="at least one step per window: 3 steps for 4 windows"):
        perflow_timesteps(3, PeRFlowConfig(num_windows=4))
    # The reference itself repeats timesteps from 997 steps over 4 windows (and its step then fails).
    with pytest.raises(ValueError, match="repeat timesteps .* Use at most 996 steps"):
        perflow_timesteps(1000, PeRFlowConfig(num_windows=4))
    with pytest.raises(ValueError, match="diff_eps, ddim_eps, velocity"):
        PeRFlowConfig(prediction_type="epsilon")
    with pytest.raises(ValueError, match="--windows"):
        PeRFlowConfig(num_windows=0)
