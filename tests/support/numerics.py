"""How the tests compare floats that two different paths computed.

Torch picks its CPU kernels at run time (ATEN_CPU_CAPABILITY default / avx2 / avx512, the thread count, even the
alignment of a tensor's memory), so two computations that are equal in exact arithmetic differ in their last
digits by an amount that depends on the machine. A numerics test therefore compares with `assert_relative`, against
a bound set from the spread measured across those kernels (`python -m scripts.measure_spread` runs the numerics
tests under each and writes the table to docs/numerics-spread.md; each test's docstring quotes its row), and uses
exact equality only where both sides run the very same ops on the very same tensors (stored data, masks, integer
tables, one model called twice).

With ALLEGRO_SPREAD_RECORD set to a file path, every comparison appends what it measured to that file (one JSON
object a line), which is how the spread table is made.
"""
import json
import os

import torch

RECORD_ENV = "ALLEGRO_SPREAD_RECORD"


def max_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over the largest magnitude of `expected` (0 when both are all zero)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    scale = expected.abs().max().item()
    difference = (actual - expected).abs().max().item()
    return difference / scale if scale > 0 else difference


def norm_relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖: how much a whole result moved (for "this changed it" checks)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm()).item()


def record(value: float, label: str = "", bound: float | None = None) -> None:
    """Append one measured error to $ALLEGRO_SPREAD_RECORD (when set), keyed by the running test."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)     # ALLEGRO_SPREAD_DIR may not exist yet
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"test": test, "label": label, "value": value, "bound": bound}) + "\n")


def assert_relative(actual: torch.Tensor, expected: torch.Tensor, bound: float, label: str = "") -> float:
    """Assert max_relative(actual, expected) <= bound; record the measured value; return it."""
    assert actual.shape == expected.shape, f"{label}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    value = max_relative(actual, expected)
    record(value, label, bound)
    assert value <= bound, f"{label or 'relative error'}: {value:.3e} > bound {bound:.1e}"
    return value


def assert_measured(value: float, bound: float, label: str = "") -> float:
    """The same for an error a test computed itself (a norm ratio, a figure a benchmark printed)."""
    record(value, label, bound)
    assert value <= bound, f"{label or 'error'}: {value:.3e} > bound {bound:.1e}"
    return value
