"""The shipped workflows and the package's nodes in the real ComfyUI front-end (headless chromium +
playwright), the way a user meets them: load each workflow with app.loadGraphData, see which node
types are missing, take what the Run button would send (app.graphToPrompt), queue it on the tiny
weights and check the mp4; and find every node in the Node Library with its name, category and help.

Pictures of the loaded graphs go to test-output/browser/, drawn by the code that draws the README's
(scripts/render_workflow_images.py refreshes docs/images/ with it)."""
import copy
import json
from pathlib import Path

import av
import numpy as np
import pytest
import requests
from PIL import Image

from allegro_devtools import browser
from allegro_devtools.workflow_check import (THIRD_PARTY_NODE_TYPES, is_runnable, load_workflow, package_types,
                                            saved_files, third_party_types, tiny_prompt, workflow_paths,
                                            write_tiny_training_list)
from allegro_devtools.workflow_api import workflow_to_prompt

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]

WORKFLOWS = {path.stem: path for path in workflow_paths()}
# workflows/allegro_t2v.json as version 0.1 shipped it, with the node ids before the "AllegroVideo_" prefix.
FORMER_WORKFLOW = Path(__file__).parents[1] / "data" / "workflow_0.1_allegro_t2v.json"
# Frames, height, width of each runnable workflow's video at the tiny size (the upscale one scales by 1.5).
# The extend workflow joins two clips overlapping by 4 frames: 24 + 24 - 4.
EXPECTED_VIDEO = {"allegro_t2v": (24, 240, 240), "allegro_ti2v": (24, 240, 240),
                  "allegro_ti2v_first_last": (24, 240, 240), "allegro_ti2v_keyframes": (24, 240, 240),
                  "allegro_ti2v_extend": (44, 240, 240), "allegro_t2v_40x360p": (24, 240, 240),
                  "allegro_t2v_core_upscale": (24, 360, 360), "allegro_train_lora": (24, 240, 240)}


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def page(comfy_server):
    assert browser.chromium_available(), f"no chromium at {browser.CHROMIUM}: run `bash scripts/ensure_chromium.sh`"
    with browser.front_end(comfy_server) as page:
        yield page
        assert page.page_errors == [], page.page_errors


@pytest.fixture(scope="module")
def input_images(comfy_server):
    """A first and a last frame in the server's input folder, of different sizes and aspects (and the tiny
    training list the training workflow reads)."""
    write_tiny_training_list(comfy_server.base_dir / "input")
    rng = np.random.default_rng(5)
    first = np.linspace(0, 255, 180 * 320 * 3).reshape(180, 320, 3).astype(np.uint8)
    Image.fromarray(first).save(comfy_server.base_dir / "input" / "browser_first.png")
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(
        comfy_server.base_dir / "input" / "browser_last.png")
    return "browser_first.png", "browser_last.png"


def video_facts(path) -> tuple[int, int, int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.height, stream.width, float(stream.average_rate)


def test_every_runnable_workflow_has_an_expected_video():
    assert {name for name, path in WORKFLOWS.items() if is_runnable(load_workflow(path))} == set(EXPECTED_VIDEO)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_loads_and_runs_from_the_front_end(name, page, comfy_server, object_info, tiny_models,
                                                    input_images, test_output):
    workflow = load_workflow(WORKFLOWS[name])
    missing = set(browser.load_workflow(page, workflow))
    # Only the documented third-party packs may be missing, and the front-end must say so.
    assert missing <= set(THIRD_PARTY_NODE_TYPES), missing
    assert missing == third_party_types(workflow)
    if missing:
        report = browser.missing_nodes_report(page)
        names_them = all(node_type in report for node_type in missing)
        assert names_them or (len(missing) > 1 and f"{len(missing)} nodes" in report), report
    shots = test_output / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    browser.workflow_picture(page, shots / f"{name}.jpg")        # as scripts/render_workflow_images.py draws it

    prompt = browser.graph_to_prompt(page)
    ours = {node_id: node for node_id, node in prompt.items() if node["class_type"] in object_info}
    # allegro_devtools.workflow_api (used by `make demo`) converts the file exactly as the front-end does.
    converted = workflow_to_prompt(workflow, object_info)
    assert {k: (v["class_type"], v["inputs"]) for k, v in ours.items()} == \
           {k: (v["class_type"], v["inputs"]) for k, v in converted.items()}
    if name not in EXPECTED_VIDEO:
        return
    entry = comfy_server.wait(comfy_server.queue_prompt(tiny_prompt(prompt, *input_images), workflow), timeout=900)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-3000:]
    videos = [path for path in saved_files(entry, comfy_server.base_dir / "output") if path.suffix == ".mp4"]
    assert len(videos) == 1, videos
    frames, height, width, fps = video_facts(videos[0])
    assert (frames, height, width, fps) == (*EXPECTED_VIDEO[name], 15)


def test_every_package_node_is_in_the_node_library_with_its_help(page, object_info):
    names = package_types(object_info)
    assert len(names) >= 10
    tree = browser.node_library_tree(page, "Allegro")
    for name in sorted(names):
        definition = browser.node_definition(page, name)
        assert definition is not None, f"{name} is not registered in the front-end"
        assert definition["display_name"] == object_info[name]["display_name"] and definition["display_name"] in tree
        category = definition["category"]
        assert category.startswith("Allegro/") and category.split("/")[-1] in tree
        assert len(definition["description"]) > 40, name
        for section in ("required", "optional"):
            for input_name, spec in definition["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
                if spec[0] in ("INT", "FLOAT"):
                    assert {"default", "min", "max"} <= set(options), f"{name}.{input_name}: default and range"
        outputs, output_names = definition["output"], definition["output_name"]
        assert len(definition["output_tooltips"]) == len(outputs) and all(definition["output_tooltips"]), name
        assert all(label and label != kind for label, kind in zip(output_names, outputs)), (name, output_names)


def test_a_workflow_saved_with_the_0_1_node_ids_opens_as_the_new_nodes(page, comfy_server, object_info):
    """Where ComfyUI has node replacement (GET /node_replacements, 0.33), the front-end offers to swap the
    0.1 nodes, and "Replace All" gives the AllegroVideo_ nodes with the file's links and widget values:
    the graph then sends exactly what the file with the new ids converts to."""
    if requests.get(comfy_server.url + "/node_replacements", timeout=30).status_code == 404:
        pytest.skip("this ComfyUI has no node replacement (no GET /node_replacements)")
    workflow = json.loads(FORMER_WORKFLOW.read_text())
    new_ids = {node["type"]: "AllegroVideo_" + node["type"].removeprefix("Allegro") for node in workflow["nodes"]
               if node["type"].startswith("Allegro")}
    assert set(browser.load_workflow(page, workflow)) == set(new_ids)
    browser.replace_all_nodes(page)
    now = {node["id"]: node for node in browser.saved_nodes(page)}
    for node in workflow["nodes"]:
        if node["type"] in new_ids:
            assert now[node["id"]]["type"] == new_ids[node["type"]]
            saved = node["widgets_values"]
            assert now[node["id"]]["widgets_values"][:len(saved)] == saved, node["type"]
    renamed = copy.deepcopy(workflow)
    for node in renamed["nodes"]:
        node["type"] = new_ids.get(node["type"], node["type"])
    sent = {k: (v["class_type"], v["inputs"]) for k, v in browser.graph_to_prompt(page).items()}
    assert sent == {k: (v["class_type"], v["inputs"]) for k, v in workflow_to_prompt(renamed, object_info).items()}
