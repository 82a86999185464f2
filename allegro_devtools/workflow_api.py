"""Turn a UI-format workflow (what ComfyUI's editor saves and the template browser opens) into the
API-format prompt that POST /prompt takes, using the server's /object_info to know which inputs
are widgets. This is what the front-end's graphToPrompt does for plain graphs (no group nodes,
no primitive nodes): every widget the node has sends its saved value, including the widgets a
node pack's web extension adds (VideoHelperSuite's Video Combine adds pix_fmt, crf, … after
`format`, as the chosen format's definition lists them). The browser tests check our workflows
through the real front-end.
"""
from typing import Callable, Iterator

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_MODES = {2, 4}            # muted, bypassed
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def spec_options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def extension_widgets(spec: list, value) -> list[tuple[str, list]]:
    """The widgets a front-end extension adds right after a combo whose options map some of its choices to
    widget definitions ("formats": {choice: [[name, type, options], …]}, VideoHelperSuite's `format`)."""
    formats = spec_options(spec).get("formats")
    if not isinstance(formats, dict) or not isinstance(value, str):
        return []
    return [(entry[0], list(entry[1:])) for entry in formats.get(value, [])]


def input_specs(info: dict, chosen: Callable[[str], object]) -> Iterator[tuple[str, str, list]]:
    """(section, name, spec) of every input of a node, in the order the front-end makes its widgets: the
    definition's inputs, each combo followed by the widgets its value `chosen(name)` adds. Lazy: `chosen`
    is asked only after the combo has been yielded, so a caller can read the value in between."""
    for section in ("required", "optional"):
        for name, spec in info.get("input", {}).get(section, {}).items():
            yield section, name, spec
            for extra_name, extra_spec in extension_widgets(spec, chosen(name)):
                yield section, extra_name, extra_spec


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_value(name: str, spec: list) -> bool:
    options = spec_options(spec)
    return bool(options.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def node_inputs(node: dict, info: dict, links: dict) -> dict:
    """The `inputs` of one node's API entry: links as [source id, slot], widgets as their saved values."""
    linked = {slot["name"]: slot["link"] for slot in node.get("inputs", []) if slot.get("link") is not None}
    saved = node.get("widgets_values")
    by_name = saved if isinstance(saved, dict) else None       # some packs (VideoHelperSuite) save widgets by name
    values = [] if by_name is not None else list(saved or [])
    inputs = {}
    for _section, name, spec in input_specs(info, inputs.get):
        if name in linked:
            link = links[linked[name]]
            inputs[name] = [str(link[1]), link[2]]
            if is_widget(spec) and values:
                values.pop(0)                      # a widget converted to an input keeps its slot
                if _has_control_value(name, spec) and values:
                    values.pop(0)
            continue
        if not is_widget(spec):
            continue
        if by_name is not None:
            if name in by_name:
                inputs[name] = by_name[name]
            continue
        if not values:
            break
        inputs[name] = values.pop(0)
        if _has_control_value(name, spec) and values and values[0] in CONTROL_VALUES:
            values.pop(0)
    return inputs


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in SKIPPED_MODES or node["type"] not in object_info:
            continue                                   # Note nodes and other UI-only nodes
        prompt[str(node["id"])] = {"class_type": node["type"],
                                   "inputs": node_inputs(node, object_info[node["type"]], links),
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def find_nodes(workflow: dict, node_type: str) -> list[dict]:
    return [node for node in workflow["nodes"] if node["type"] == node_type]
