"""Turn a UI-format workflow (what ComfyUI's editor saves and the template browser opens) into the
API-format prompt that POST /prompt takes, using the server's /object_info to know which inputs
are widgets. This is what the front-end's graphToPrompt does for plain graphs (no groups
nodes, no primitive nodes); the browser tests check our workflows through the real front-end.
"""
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIPPED_MODES = {2, 4}            # muted, bypassed


def _input_specs(info: dict) -> list[tuple[str, list]]:
    specs = []
    for section in ("required", "optional"):
        specs += list(info.get("input", {}).get(section, {}).items())
    return specs


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_value(name: str, spec: list) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(options.get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def workflow_to_prompt(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in SKIPPED_MODES or node["type"] not in object_info:
            continue                                   # Note nodes and other UI-only nodes
        linked = {slot["name"]: slot["link"] for slot in node.get("inputs", []) if slot.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):   # some nodes save widgets by name
            values = None
        inputs = {}
        for name, spec in _input_specs(object_info[node["type"]]):
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
                if _is_widget(spec) and values:
                    values.pop(0)                      # a widget converted to an input keeps its slot
                    if _has_control_value(name, spec) and values:
                        values.pop(0)
                continue
            if not _is_widget(spec):
                continue
            if values is None:
                if name in node["widgets_values"]:
                    inputs[name] = node["widgets_values"][name]
                continue
            if not values:
                break
            inputs[name] = values.pop(0)
            if _has_control_value(name, spec) and values and values[0] in ("fixed", "increment", "decrement", "randomize"):
                values.pop(0)
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def find_nodes(workflow: dict, node_type: str) -> list[dict]:
    return [node for node in workflow["nodes"] if node["type"] == node_type]
