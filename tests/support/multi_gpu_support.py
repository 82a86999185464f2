"""What the multi-GPU test modules share: the package's adapters/parallel.py as ComfyUI loaded it, and a fixture
that stops its worker processes when a module is done."""
import sys

import pytest


def parallel_module():
    """The package's adapters/parallel.py as ComfyUI loaded it (the custom-node package is a module of its own)."""
    return next(module for name, module in sys.modules.items() if name.endswith(".adapters.parallel")
                and hasattr(module, "ParallelRoute"))


@pytest.fixture(scope="module", autouse=True)
def stop_workers_afterwards(comfy):
    yield
    parallel_module().shutdown()
