"""The package loads as a custom node in a real ComfyUI server: its nodes are in /object_info with
their categories, and a graph using one of them runs through /prompt."""
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

PACKAGE_NODES = {"AllegroModelLoader", "AllegroVAELoader", "AllegroT5Loader", "AllegroTextEncode",
                 "AllegroEmptyLatentVideo", "AllegroSampler", "AllegroVAEDecode", "AllegroVAEEncode",
                 "AllegroTI2VConditioning", "AllegroStepCache"}


def test_nodes_are_in_object_info(comfy_server):
    info = comfy_server.object_info()
    assert PACKAGE_NODES <= set(info)
    for name in PACKAGE_NODES:
        assert info[name]["category"].startswith("Allegro/")
        assert info[name]["description"]
    import_lines = [line for line in comfy_server.log_tail(200000).splitlines() if "ComfyUI-Allegro" in line]
    assert not any("IMPORT FAILED" in line for line in import_lines), import_lines


def test_a_graph_with_a_package_node_runs_through_prompt(comfy_server):
    prompt = {
        "1": {"class_type": "AllegroEmptyLatentVideo", "inputs": {"width": 64, "height": 48, "length": 8, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "server_test/latent"}},
    }
    entry = comfy_server.run(prompt, timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["2"]["latents"][0]
    path = comfy_server.base_dir / "output" / saved["subfolder"] / saved["filename"]
    assert path.is_file() and path.stat().st_size > 0


def test_a_bad_size_is_refused_with_the_allowed_values_and_the_server_goes_on(comfy_server):
    prompt = {
        "1": {"class_type": "AllegroEmptyLatentVideo", "inputs": {"width": 100, "height": 48, "length": 8, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "server_test/bad"}},
    }
    entry = comfy_server.run(prompt, timeout=120)
    assert entry["status"]["status_str"] == "error"
    error = dict(entry["status"]["messages"])["execution_error"]
    assert "width must be a multiple of 16" in error["exception_message"]
    assert "use 96 or 112" in error["exception_message"]
    prompt["1"]["inputs"]["width"] = 96
    assert comfy_server.run(prompt, timeout=120)["status"]["status_str"] == "success"
