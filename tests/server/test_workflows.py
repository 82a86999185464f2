"""The shipped workflows (workflows/*.json) against a live ComfyUI server: listed by the template
browser, every node type known (package, core, or one of the two documented third-party packs),
every saved widget value and link accepted by the node definitions, and a Note about the model files.

The browser suite (test_browser.py) loads the same files through the real front-end and runs them."""
import copy

import pytest

from allegro_devtools.runtime import PACKAGE_DIR_NAME, REPO_ROOT
from allegro_devtools.workflow_check import (NOTE_TYPES, RIFE_VFI, THIRD_PARTY_NODE_TYPES, VHS_VIDEO_COMBINE,
                                            link_problems, load_workflow, node_types, oldest_comfyui,
                                            third_party_types, unknown_node_types, widget_problems, workflow_paths)

pytestmark = [pytest.mark.server, pytest.mark.slow]

SHIPPED = {"allegro_t2v", "allegro_ti2v", "allegro_ti2v_first_last", "allegro_ti2v_keyframes", "allegro_ti2v_extend",
           "allegro_t2v_40x360p", "allegro_t2v_core_upscale", "allegro_t2v_rife_30fps", "allegro_train_lora"}
THIRD_PARTY_BY_WORKFLOW = {"allegro_t2v_rife_30fps": {RIFE_VFI, VHS_VIDEO_COMBINE}}
WORKFLOWS = {path.stem: path for path in workflow_paths()}


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_the_shipped_workflows_are_there():
    assert set(WORKFLOWS) == SHIPPED


def test_the_template_browser_lists_them(comfy_server):
    listed = comfy_server.get("/workflow_templates")
    assert sorted(listed[PACKAGE_DIR_NAME]) == sorted(SHIPPED)
    served = comfy_server.get(f"/api/workflow_templates/{PACKAGE_DIR_NAME}/allegro_t2v.json")
    assert served == load_workflow(WORKFLOWS["allegro_t2v"])


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_every_node_type_is_known_and_third_party_ones_are_the_documented_ones(name, object_info):
    workflow = load_workflow(WORKFLOWS[name])
    assert unknown_node_types(workflow, object_info) == set()
    assert third_party_types(workflow) == THIRD_PARTY_BY_WORKFLOW.get(name, set())
    assert any(t.startswith("Allegro") for t in node_types(workflow))


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_saved_values_and_links_fit_the_node_definitions(name, object_info):
    workflow = load_workflow(WORKFLOWS[name])
    assert widget_problems(workflow, object_info) == []
    assert link_problems(workflow, object_info) == []
    ids = [node["id"] for node in workflow["nodes"]]
    assert len(ids) == len(set(ids)) and workflow["last_node_id"] >= max(ids)
    assert workflow["last_link_id"] >= max(link[0] for link in workflow["links"])


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_a_note_says_which_model_file_goes_where_and_the_oldest_comfyui(name):
    workflow = load_workflow(WORKFLOWS[name])
    notes = [" ".join(map(str, node["widgets_values"])) for node in workflow["nodes"] if node["type"] in NOTE_TYPES]
    assert notes, "no Note node"
    text = "\n".join(notes)
    for needed in ("models/diffusers/Allegro", "models/text_encoders", "t5xxl_fp16.safetensors",
                   f"Needs ComfyUI {oldest_comfyui()} or newer"):
        assert needed in text
    if "ti2v" in name:
        assert "Allegro-TI2V" in text
    for pack in {THIRD_PARTY_NODE_TYPES[t].split(" (")[0] for t in third_party_types(workflow)}:
        assert pack in text


def test_the_readme_names_the_third_party_packs_and_node_types():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for node_type, source in THIRD_PARTY_NODE_TYPES.items():
        assert source.split(" (")[0] in readme and node_type in readme


def test_a_workflow_naming_an_undefined_node_fails_the_check(object_info):
    """The check above can fail: one node renamed to a type nobody defines is reported, by name."""
    workflow = copy.deepcopy(load_workflow(WORKFLOWS["allegro_t2v"]))
    sampler = next(node for node in workflow["nodes"] if node["type"] == "AllegroVideo_Sampler")
    sampler["type"] = "AllegroSamplerThatDoesNotExist"
    assert unknown_node_types(workflow, object_info) == {"AllegroSamplerThatDoesNotExist"}
    assert "AllegroSamplerThatDoesNotExist" not in THIRD_PARTY_NODE_TYPES


def test_a_bad_saved_value_fails_the_check(object_info):
    workflow = copy.deepcopy(load_workflow(WORKFLOWS["allegro_t2v"]))
    latent = next(node for node in workflow["nodes"] if node["type"] == "AllegroVideo_EmptyLatentVideo")
    latent["widgets_values"][0] = 100000
    assert any("width" in problem for problem in widget_problems(workflow, object_info))


def test_a_bad_value_in_a_widget_an_extension_adds_fails_the_check(object_info):
    """VideoHelperSuite's crf is not in Video Combine's inputs but in its format's definition: it is checked too."""
    workflow = copy.deepcopy(load_workflow(WORKFLOWS["allegro_t2v_rife_30fps"]))
    combine = next(node for node in workflow["nodes"] if node["type"] == VHS_VIDEO_COMBINE)
    combine["widgets_values"]["crf"] = 500
    assert widget_problems(workflow, object_info) == \
        [f"node {combine['id']} ({VHS_VIDEO_COMBINE}).crf: 500 is outside [0, 100]"]
