"""The 0.1 node ids (before the "AllegroVideo_" prefix) map to the new nodes where ComfyUI has node
replacement (io.NodeReplace, served to the front-end at GET /node_replacements: 0.33), and the mapping,
an optional feature, never costs the nodes where it cannot be registered (ComfyUI without its web server).
The browser suite opens a 0.1 workflow and swaps its nodes (test_browser.py)."""
import asyncio
import logging
import sys

import pytest
import requests

from allegro_devtools.workflow_check import package_types

FORMER_PREFIX, PREFIX = "Allegro", "AllegroVideo_"
# The ids 0.1 registered (its nodes/__init__.py NODE_CLASS_MAPPINGS).
FORMER_NODE_IDS = {"AllegroModelLoader", "AllegroVAELoader", "AllegroT5Loader", "AllegroTextEncode",
                   "AllegroEmptyLatentVideo", "AllegroSampler", "AllegroVAEDecode", "AllegroVAEEncode",
                   "AllegroTI2VConditioning", "AllegroStepCache"}


def new_id(former: str) -> str:
    return PREFIX + former.removeprefix(FORMER_PREFIX)


def test_without_a_web_server_every_node_loads_and_the_mapping_is_skipped(comfy, caplog):
    """In-process ComfyUI (no PromptServer): 0.33's registry would raise there, which used to make ComfyUI
    drop all of the package's nodes."""
    assert {new_id(former) for former in FORMER_NODE_IDS} <= set(comfy.node_types)
    package_nodes = sys.modules[comfy.node_types[PREFIX + "Sampler"].__module__.rsplit(".", 1)[0]]
    with caplog.at_level(logging.INFO):
        assert asyncio.run(package_nodes.register_replacements()) == 0
    from comfy_api.latest import io
    if hasattr(io, "NodeReplace"):
        assert "no ComfyUI web server" in caplog.text and "not mapped" in caplog.text


@pytest.mark.server
def test_the_server_maps_each_0_1_node_id_to_its_new_node(comfy_server):
    response = requests.get(comfy_server.url + "/node_replacements", timeout=30)
    if response.status_code == 404:
        pytest.skip("this ComfyUI has no node replacement (no GET /node_replacements)")
    response.raise_for_status()
    ours = {old: [entry["new_node_id"] for entry in entries] for old, entries in response.json().items()
            if old.startswith(FORMER_PREFIX)}
    assert ours == {former: [new_id(former)] for former in FORMER_NODE_IDS}
    assert {new_id(former) for former in FORMER_NODE_IDS} <= package_types(comfy_server.object_info())
