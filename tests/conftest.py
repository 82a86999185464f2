"""Shared fixtures: one ComfyUI base directory (models, input, output) per test session, the tiny
checkpoints written into it, and the two ways of running graphs: in-process and a live server."""
import os
from pathlib import Path

import pytest

from allegro_devtools.runtime import REPO_ROOT

# Figures, screenshots and videos the tests make, kept for a person to look at.
TEST_OUTPUT = Path(os.environ.get("ALLEGRO_TEST_OUTPUT", REPO_ROOT / "test-output"))


@pytest.fixture(scope="session")
def test_output() -> Path:
    TEST_OUTPUT.mkdir(parents=True, exist_ok=True)
    return TEST_OUTPUT


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    from allegro_devtools.runtime import prepare_base_dir
    from bad_inputs import write_link_node
    base = prepare_base_dir(tmp_path_factory.mktemp("comfy-base"))
    write_link_node(base)          # a node with an "any" output, to link values into loaders and widgets
    return base


@pytest.fixture(scope="session")
def tiny_models(base_dir):
    """Tiny random-weight Allegro checkpoints in the real formats, under base_dir/models."""
    from allegro_devtools.random_models import write_all
    return write_all(base_dir / "models")


@pytest.fixture(scope="session")
def comfy(base_dir, tiny_models):
    """ComfyUI's executor in this process, with the package loaded as a custom node."""
    from allegro_devtools.inprocess import InProcessComfy
    return InProcessComfy.boot(base_dir)


@pytest.fixture(scope="session")
def comfy_server(base_dir, tiny_models):
    """A live `main.py --cpu` server on a free loopback port; stopped at the end of the session."""
    from allegro_devtools.server import ComfyServer
    server = ComfyServer(base_dir, extra_args=["--cache-none"]).start()
    yield server
    server.stop()
