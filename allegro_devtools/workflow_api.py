"""Turn a UI-format workflow (what ComfyUI's editor saves and the template browser opens) into the
API-format prompt that POST /prompt takes, using the server's /object_info to know which inputs
are widgets. This is what the front-end's graphToPrompt does for plain graphs (no group nodes,
no primitive nodes): every widget the node has sends its saved value, or its default where the file
saved fewer values than the node now has widgets (a widget added in a newer ComfyUI, such as Create
Video's `bit_depth`), including the widgets that follow a chosen value:
- a V3 DynamicCombo's option inputs, named "<combo>.<input>" and nested as deep as the options go
  (core Save Video's `codec` → `codec.encoding` → `codec.encoding.crf` in ComfyUI 0.33);
- the widgets a node pack's web extension adds (VideoHelperSuite's Video Combine adds pix_fmt, crf, …
  after `format`, as the chosen format's definition lists them).
The browser tests check our workflows through the real front-end.
"""
from typing import Callable, Iterator

# The input kinds the front-end draws as widgets (its core widget constructors), and V3's DynamicCombo.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "MARKDOWN", "COLOR", "IMAGECOMPARE", "BOUNDING_BOX",
                "CHART", "GALLERIA", "PAINTER", "COMPOSITOR", "TEXTAREA", "CURVE", "RANGE", "BOUNDING_BOXES",
                "COLORS", DYNAMIC_COMBO}
SKIPPED_MODES = {2, 4}            # muted, bypassed
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def spec_options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def widget_spec(spec: list) -> tuple[str, list | None, dict]:
    """(kind, choices or None, options) of an /object_info input: V1 ([choices], {...}), V3 ("COMBO",
    {"options": [...]}), a DynamicCombo (its option keys are the choices) or any other kind."""
    options = spec_options(spec)
    if isinstance(spec[0], list):
        return "COMBO", spec[0], options
    if spec[0] == "COMBO":
        return "COMBO", options.get("options", []), options
    if spec[0] == DYNAMIC_COMBO:
        return "COMBO", [option["key"] for option in options.get("options", [])], options
    return spec[0], None, options


def is_widget(spec: list) -> bool:
    kind = spec[0]
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not spec_options(spec).get("forceInput")


def default_value(spec: list):
    """The value a new widget starts with in the front-end: the definition's default, else a combo's first
    choice, else zero / empty."""
    kind, choices, options = widget_spec(spec)
    if "default" in options:
        return options["default"]
    if kind == "COMBO":
        return choices[0] if choices else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def extension_widgets(spec: list, value) -> list[tuple[str, list]]:
    """The widgets a front-end extension adds right after a combo whose options map some of its choices to
    widget definitions ("formats": {choice: [[name, type, options], …]}, VideoHelperSuite's `format`)."""
    formats = spec_options(spec).get("formats")
    if not isinstance(formats, dict) or not isinstance(value, str):
        return []
    return [(entry[0], list(entry[1:])) for entry in formats.get(value, [])]


def dynamic_combo_inputs(name: str, spec: list, value) -> list[tuple[str, str, list]]:
    """(section, "<name>.<input>", spec) of the inputs a DynamicCombo shows for its chosen option, in the
    order the front-end inserts them after the combo: the option's required inputs, then its optional ones."""
    if spec[0] != DYNAMIC_COMBO:
        return []
    for option in spec_options(spec).get("options", []):
        if option.get("key") == value:
            inputs = option.get("inputs") or {}
            return [(section, f"{name}.{sub_name}", sub_spec) for section in ("required", "optional")
                    for sub_name, sub_spec in (inputs.get(section) or {}).items()]
    return []


def _with_followers(section: str, name: str, spec: list, chosen: Callable[[str], object]):
    yield section, name, spec
    value = chosen(name)            # asked only now: the caller has just read this input's value
    for sub_section, sub_name, sub_spec in dynamic_combo_inputs(name, spec, value):
        yield from _with_followers(sub_section, sub_name, sub_spec, chosen)
    for extra_name, extra_spec in extension_widgets(spec, value):
        yield section, extra_name, extra_spec


def input_specs(info: dict, chosen: Callable[[str], object]) -> Iterator[tuple[str, str, list]]:
    """(section, name, spec) of every input of a node, in the order the front-end makes its widgets: the
    definition's inputs, each followed by the inputs its value `chosen(name)` adds (DynamicCombo options,
    extension widgets). Lazy: `chosen` is asked only after the input has been yielded, so a caller can
    read the value in between."""
    for section in ("required", "optional"):
        for name, spec in info.get("input", {}).get(section, {}).items():
            yield from _with_followers(section, name, spec, chosen)


def _has_control_value(name: str, spec: list) -> bool:
    options = spec_options(spec)
    return bool(options.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def _prompt_value(value):
    """As graphToPrompt sends a widget's value: a list is wrapped so that it is not read as a link."""
    return {"__value__": value} if isinstance(value, list) else value


def node_inputs(node: dict, info: dict, links: dict, saved_only: bool = False) -> dict:
    """The `inputs` of one node's API entry: links as [source id, slot], widgets as their saved values (or,
    unless `saved_only`, their defaults where the file saved none)."""
    linked = {slot["name"]: slot["link"] for slot in node.get("inputs", []) if slot.get("link") is not None}
    saved = node.get("widgets_values")
    by_name = saved if isinstance(saved, dict) else None       # some packs (VideoHelperSuite) save widgets by name
    values = [] if by_name is not None else list(saved or [])
    inputs = {}
    for _section, name, spec in input_specs(info, inputs.get):
        widget = is_widget(spec)
        if name in linked:
            link = links[linked[name]]
            inputs[name] = [str(link[1]), link[2]]
            if widget and values:
                values.pop(0)                      # a widget converted to an input keeps its slot
                if _has_control_value(name, spec) and values:
                    values.pop(0)
            continue
        if not widget:
            continue
        if by_name is not None and name in by_name:
            inputs[name] = _prompt_value(by_name[name])
        elif by_name is None and values:
            inputs[name] = _prompt_value(values.pop(0))
            if _has_control_value(name, spec) and values and values[0] in CONTROL_VALUES:
                values.pop(0)
        elif not saved_only:
            inputs[name] = default_value(spec)
    return inputs


def workflow_to_prompt(workflow: dict, object_info: dict, saved_only: bool = False) -> dict:
    """The API prompt of a UI workflow; `saved_only` leaves out the widgets the file saved no value for
    (what workflow_check reports), where the front-end would send their defaults."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in SKIPPED_MODES or node["type"] not in object_info:
            continue                                   # Note nodes and other UI-only nodes
        prompt[str(node["id"])] = {"class_type": node["type"],
                                   "inputs": node_inputs(node, object_info[node["type"]], links, saved_only),
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def find_nodes(workflow: dict, node_type: str) -> list[dict]:
    return [node for node in workflow["nodes"] if node["type"] == node_type]
