"""allegro_devtools.workflow_api without a server: the conversion sends every widget value a node saved, as the
front-end's graphToPrompt does, including the widgets a node pack's web extension adds (VideoHelperSuite's
Video Combine: pix_fmt, crf, save_metadata, trim_to_audio after `format`, from the format's definition).
The browser suite compares the conversion with app.graphToPrompt() for the package's and core nodes; the
third-party packs are not installed there, so their widgets are checked here against their definitions."""
import copy

from allegro_devtools.workflow_api import workflow_to_prompt
from allegro_devtools.workflow_check import (THIRD_PARTY_DEFS, VHS_H264_WIDGETS, VHS_VIDEO_COMBINE, WORKFLOW_DIR,
                                             load_workflow)

RIFE_WORKFLOW = WORKFLOW_DIR / "allegro_t2v_rife_30fps.json"


def video_combine(workflow: dict) -> dict:
    (node,) = [node for node in workflow["nodes"] if node["type"] == VHS_VIDEO_COMBINE]
    return node


def test_an_edited_crf_in_the_rife_workflow_reaches_the_prompt():
    workflow = copy.deepcopy(load_workflow(RIFE_WORKFLOW))
    node = video_combine(workflow)
    node["widgets_values"].update(crf=28, pix_fmt="yuv420p10le")
    inputs = workflow_to_prompt(workflow, THIRD_PARTY_DEFS)[str(node["id"])]["inputs"]
    assert inputs["crf"] == 28 and inputs["pix_fmt"] == "yuv420p10le"
    # Everything the node shows is sent, the format's widgets right after `format`, as VHS's extension adds them.
    assert list(inputs) == ["images", "frame_rate", "loop_count", "filename_prefix", "format", *VHS_H264_WIDGETS,
                            "pingpong", "save_output"]
    assert inputs["images"] == ["9", 0] and inputs["frame_rate"] == 30 and inputs["format"] == "video/h264-mp4"


def test_a_format_without_extra_widgets_sends_none_of_them():
    """With another format chosen, the front-end has no crf widget, so a stale saved value is not sent."""
    workflow = copy.deepcopy(load_workflow(RIFE_WORKFLOW))
    node = video_combine(workflow)
    node["widgets_values"]["format"] = "image/gif"
    inputs = workflow_to_prompt(workflow, THIRD_PARTY_DEFS)[str(node["id"])]["inputs"]
    assert inputs["format"] == "image/gif" and not set(VHS_H264_WIDGETS) & set(inputs)


def test_extension_widgets_saved_as_a_list_follow_their_combo():
    """A pack that saves widgets as a list saves them in the order the node shows them: an extension's widgets
    right after the combo that added them; a seed's control value ("fixed") is skipped."""
    definitions = {"Example": {"input": {"required": {
        "seed": ["INT", {"control_after_generate": True}],
        "format": [["a", "b"], {"formats": {"a": [["quality", "INT", {"default": 5}], ["fast", "BOOLEAN"]]}}],
        "name": ["STRING", {}]}}}}
    node = {"id": 1, "type": "Example", "inputs": [], "widgets_values": [7, "fixed", "a", 9, True, "clip"]}
    assert workflow_to_prompt({"nodes": [node], "links": []}, definitions)["1"]["inputs"] == \
        {"seed": 7, "format": "a", "quality": 9, "fast": True, "name": "clip"}
    node["widgets_values"] = [7, "fixed", "b", "clip"]
    assert workflow_to_prompt({"nodes": [node], "links": []}, definitions)["1"]["inputs"] == \
        {"seed": 7, "format": "b", "name": "clip"}


def test_a_dynamic_combo_shows_its_options_inputs_and_unsaved_widgets_send_their_defaults():
    """A V3 DynamicCombo (ComfyUI 0.33's Save Video `codec`) is followed by its chosen option's inputs, named
    "<combo>.<input>" and nested as deep as the options go, as the front-end inserts them; a widget the file
    has no value for (saved by an older ComfyUI: Create Video's `bit_depth`, `codec.encoding`) sends its
    default, which is what the front-end's new widget starts with. `saved_only` leaves those out."""
    re_encode = {"key": "re-encode", "inputs": {"required": {"crf": ["FLOAT", {"default": 23.0}]}}}
    encoding = ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "auto", "inputs": {}}, re_encode]}]
    codec = ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "auto", "inputs": {}},
                                                  {"key": "h264", "inputs": {"optional": {"encoding": encoding}}}]}]
    definitions = {"Save": {"input": {"required": {"video": ["VIDEO", {}], "prefix": ["STRING", {}], "codec": codec},
                                      "optional": {"bit_depth": ["INT", {"default": 8}],
                                                   "level": ["INT", {"default": 3, "forceInput": True}]}}}}

    def converted(values, saved_only=False):
        node = {"id": 1, "type": "Save", "inputs": [], "widgets_values": values}
        return workflow_to_prompt({"nodes": [node], "links": []}, definitions, saved_only)["1"]["inputs"]

    assert converted(["v", "h264", "re-encode", 28.0, 10]) == \
        {"prefix": "v", "codec": "h264", "codec.encoding": "re-encode", "codec.encoding.crf": 28.0, "bit_depth": 10}
    assert list(converted(["v", "h264", "re-encode", 28.0, 10])) == \
        ["prefix", "codec", "codec.encoding", "codec.encoding.crf", "bit_depth"]
    assert converted(["v", "h264"]) == {"prefix": "v", "codec": "h264", "codec.encoding": "auto", "bit_depth": 8}
    assert converted(["v", "auto", 10]) == {"prefix": "v", "codec": "auto", "bit_depth": 10}
    assert converted(["v", "h264"], saved_only=True) == {"prefix": "v", "codec": "h264"}
