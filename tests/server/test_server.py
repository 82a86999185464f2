"""The package loads as a custom node in a real ComfyUI server: its nodes are in /object_info with
their categories, and a graph using one of them runs through /prompt."""
import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

from allegro_devtools.workflow_check import package_types

PACKAGE_NODES = {"AllegroVideo_ModelLoader", "AllegroVideo_VAELoader", "AllegroVideo_T5Loader",
                 "AllegroVideo_TextEncode", "AllegroVideo_EmptyLatentVideo", "AllegroVideo_Sampler",
                 "AllegroVideo_VAEDecode", "AllegroVideo_VAEEncode", "AllegroVideo_TI2VConditioning",
                 "AllegroVideo_StepCache", "AllegroVideo_LoraLoader", "AllegroVideo_TI2VKeyframes",
                 "AllegroVideo_TI2VContinue", "AllegroVideo_JoinClips", "AllegroVideo_MultiGPU",
                 "AllegroVideo_BlockSwap", "AllegroVideo_PAB",
                 "AllegroVideo_PeRFlowSampler",
                 "AllegroVideo_TrainingClip", "AllegroVideo_TrainingDataset", "AllegroVideo_TrainLoRA"}
# The node ids of the other Allegro pack (bombax-xiaoice/ComfyUI-Allegro): ComfyUI lets the pack loaded
# last silently replace an id, so ours must never be one of these.
OTHER_PACK_NODE_IDS = {"LoadAllegroModel", "AllegroSampler", "AllegroDecoder", "AllegroEncoder", "AllegroTextEncoder",
                       "AllegroTI2VSampler", "AllegroTI2VEncoder", "LoadAllegroTI2VModel"}


def test_nodes_are_in_object_info(comfy_server):
    info = comfy_server.object_info()
    assert package_types(info) == PACKAGE_NODES
    for name in PACKAGE_NODES:
        assert info[name]["category"].startswith("Allegro/")
        assert info[name]["description"]
    import_lines = [line for line in comfy_server.log_tail(200000).splitlines() if "ComfyUI-Allegro" in line]
    assert not any("IMPORT FAILED" in line for line in import_lines), import_lines


def test_node_ids_are_the_packages_own(comfy_server):
    """Every id the server registers for this package has our prefix and is not the other pack's; every
    node is a V3 node whose id is a string literal in nodes/ (what ComfyUI-Manager's scanner reads)."""
    import re
    from allegro_devtools.runtime import REPO_ROOT
    ours = package_types(comfy_server.object_info())
    assert all(node_id.startswith("AllegroVideo_") for node_id in ours)
    assert not ours & OTHER_PACK_NODE_IDS
    literals = set(re.findall(r'node_id="([^"]+)"', "".join(p.read_text() for p in (REPO_ROOT / "nodes").glob("*.py"))))
    assert literals == ours
    assert not re.search(r"def INPUT_TYPES", "".join(p.read_text() for p in (REPO_ROOT / "nodes").glob("*.py")))


def test_a_graph_with_a_package_node_runs_through_prompt(comfy_server):
    prompt = {
        "1": {"class_type": "AllegroVideo_EmptyLatentVideo",
              "inputs": {"width": 64, "height": 48, "length": 8, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "server_test/latent"}},
    }
    entry = comfy_server.run(prompt, timeout=120)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = entry["outputs"]["2"]["latents"][0]
    path = comfy_server.base_dir / "output" / saved["subfolder"] / saved["filename"]
    assert path.is_file() and path.stat().st_size > 0


def test_a_bad_size_is_refused_with_the_allowed_values_and_the_server_goes_on(comfy_server):
    prompt = {
        "1": {"class_type": "AllegroVideo_EmptyLatentVideo",
              "inputs": {"width": 100, "height": 48, "length": 8, "batch_size": 1}},
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "server_test/bad"}},
    }
    entry = comfy_server.run(prompt, timeout=120)
    assert entry["status"]["status_str"] == "error"
    error = dict(entry["status"]["messages"])["execution_error"]
    assert "width must be a multiple of 16" in error["exception_message"]
    assert "use 96 or 112" in error["exception_message"]
    prompt["1"]["inputs"]["width"] = 96
    assert comfy_server.run(prompt, timeout=120)["status"]["status_str"] == "success"
