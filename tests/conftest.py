"""Shared fixtures: one ComfyUI base directory (models, input, output) per test session, the tiny
checkpoints written into it, and the two ways of running graphs: in-process and a live server."""
import os
from pathlib import Path

import pytest

from allegro_devtools.runtime import REPO_ROOT

# Modules whose tests compare floats that two different paths computed (against diffusers, against another
# load, another kernel or another layout). `make test` runs them a second time under another CPU kernel level
# (scripts/test.sh), and `python -m scripts.measure_spread` measures their spread (tests/support/numerics.py).
NUMERICS_MODULES = {
    "test_vae", "test_transformer", "test_t2v_parity", "test_model_loader", "test_comfy_compat", "test_model_variants",
    "test_ti2v_keyframes", "test_ti2v_extend", "test_ti2v_inputs", "test_native_clip", "test_lora",
    "test_quantized_models", "test_quantization", "test_vae_node_tiling", "test_schedule", "test_core_nodes",
    "test_training_objective", "test_pab", "test_parallel", "test_pab_parallel",
}


# Figures, screenshots and videos the tests make, kept for a person to look at.
TEST_OUTPUT = Path(os.environ.get("ALLEGRO_TEST_OUTPUT", REPO_ROOT / "test-output"))


# Fixtures that run ComfyUI: their tests, and those marked `server`, get the `comfyui` marker, which
# scripts/test.sh selects on runtimes that run only the integration tests.
COMFYUI_FIXTURES = {"comfy", "comfy_server"}


def pytest_collection_modifyitems(items):
    """The markers that say what a test is (numerics, comfyui), set here so each has one rule."""
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in NUMERICS_MODULES:
            item.add_marker(pytest.mark.numerics)
        if item.get_closest_marker("server") or COMFYUI_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.comfyui)


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


@pytest.fixture(scope="session")
def quantized_models(base_dir):
    """Width-768 random-weight T2V and TI2V transformers (fp32 .safetensors) and their conversions by
    scripts/convert_weights.py, in base_dir/models/diffusion_models: {"t2v": {"fp32": name, "Q4_K": name, …},
    "ti2v": {…}} with file names as the model loader lists them."""
    from allegro_devtools.random_models import write_quantizable
    from scripts.convert_weights import convert
    sources = write_quantizable(base_dir / "models")
    plan = {"t2v": ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "fp8_scaled"), "ti2v": ("Q8_0", "Q4_K", "fp8_scaled")}
    names = {}
    for kind, formats in plan.items():
        names[kind] = {"fp32": sources[kind].name}
        for fmt in formats:
            target = sources[kind].parent / f"{sources[kind].stem}_{fmt}{'.safetensors' if fmt == 'fp8_scaled' else '.gguf'}"
            if not target.exists():
                convert(sources[kind], target, fmt, log=lambda *_: None)
            names[kind][fmt] = target.name
    return names
