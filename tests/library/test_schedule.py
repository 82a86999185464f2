"""The schedule equals diffusers' EulerAncestral/EulerDiscrete "linspace" schedule exactly, and
sigma <-> timestep round-trips to the reference's float32 timesteps."""
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from allegro.schedule import ReferenceNoise, linspace_schedule, sigma_at, timestep_at, training_sigmas
from numerics import assert_measured


def test_training_sigmas_equal_the_reference_scheduler():
    """The training sigmas equal the reference scheduler's, and the last is 157.4073. Measured spread
    (default/avx2/avx512 × 1/2 threads): sigma_max - 157.4073 2.77e-5 in every setting; bound 1e-3 (the constant is
    written to 4 decimals)."""
    reference = EulerAncestralDiscreteScheduler()
    expected = ((1 - reference.alphas_cumprod) / reference.alphas_cumprod) ** 0.5
    assert torch.equal(training_sigmas(), expected)
    assert_measured(abs(training_sigmas()[-1].item() - 157.4073), 1e-3, "sigma_max abs")


@pytest.mark.parametrize("steps", [1, 2, 7, 50, 100])
@pytest.mark.parametrize("scheduler_class", [EulerAncestralDiscreteScheduler, EulerDiscreteScheduler])
def test_linspace_schedule_equals_reference(steps, scheduler_class):
    reference = scheduler_class()
    reference.set_timesteps(steps)
    timesteps, sigmas = linspace_schedule(steps, training_sigmas())
    assert torch.equal(timesteps, reference.timesteps)
    assert torch.equal(sigmas, reference.sigmas)
    # The reference starts from randn * max sigma (not sqrt(1 + sigma^2)).
    assert reference.init_noise_sigma == sigmas.max()


@pytest.mark.parametrize("steps", [20, 100])
def test_sigma_and_timestep_round_trip_to_the_reference_timesteps(steps):
    table = training_sigmas()
    timesteps, sigmas = linspace_schedule(steps, table)
    assert torch.equal(sigma_at(timesteps, table), sigmas[:-1])
    # Two adjacent float32 timesteps can round to one float32 sigma: at most one float32 step apart.
    back = timestep_at(sigmas[:-1], table)
    one_step = torch.nextafter(timesteps, torch.full_like(timesteps, 1e4)) - timesteps
    assert ((back - timesteps).abs() <= one_step).all()
    assert (back == timesteps).float().mean() >= 0.95


def test_interpolation_matches_table_at_integers_and_is_monotonic():
    table = training_sigmas()
    integers = torch.arange(1000, dtype=torch.float32)
    assert torch.equal(sigma_at(integers, table), table)
    assert torch.equal(timestep_at(table, table), integers)
    fine = torch.linspace(0, 999, 5001)
    assert (sigma_at(fine, table).diff() >= 0).all()


def test_reference_noise_is_one_stream_like_the_reference_pipeline():
    stream = ReferenceNoise(1427329220)
    first, second = stream.draw((1, 4, 2, 3, 3)), stream.draw((1, 4, 2, 3, 3))
    generator = torch.Generator("cpu").manual_seed(1427329220)
    assert torch.equal(first, torch.randn((1, 4, 2, 3, 3), generator=generator))
    assert torch.equal(second, torch.randn((1, 4, 2, 3, 3), generator=generator))
