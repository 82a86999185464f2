"""Build UI-format workflows (what ComfyUI's editor saves) from short node descriptions, with widget order,
defaults, input and output types taken from node definitions (a live /object_info plus
workflow_check.THIRD_PARTY_DEFS), so a built workflow is what the front-end would save for the same graph.
scripts/build_workflows.py describes the shipped workflows with it."""
import tempfile
from dataclasses import dataclass, field

from .workflow_api import default_value, extension_widgets, is_widget, widget_spec
from .workflow_check import THIRD_PARTY_DEFS, VHS_VIDEO_COMBINE


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)     # widget name -> value (others: the definition's default)
    links: dict = field(default_factory=dict)       # input name -> (source node id, output slot)
    title: str | None = None
    width: int = 360
    text: str | None = None                          # Note nodes


def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(name, info["input"][section][name]) for section in ("required", "optional")
            for name in order.get(section, [])]


def added_widgets(node: Node, info: dict) -> list[tuple[str, list]]:
    """The widgets a front-end extension adds for the node's chosen values (VideoHelperSuite: the format's)."""
    return [extra for name, spec in ordered_inputs(info) if is_widget(spec)
            for extra in extension_widgets(spec, node.widgets.get(name, default_value(spec)))]


def note_node(node: Node, order: int) -> dict:
    return {"id": node.id, "type": "Note", "pos": list(node.pos), "size": [node.width, 400], "flags": {},
            "order": order, "mode": 0, "properties": {}, "color": "#432", "bgcolor": "#653",
            "title": node.title or "Note", "widgets_values": [node.text]}


def build(nodes: list[Node], definitions: dict) -> dict:
    by_id = {node.id: node for node in nodes}
    links, ui_nodes = [], []
    outgoing: dict[tuple[int, int], list[int]] = {}     # (node, output slot) -> link ids
    incoming: dict[tuple[int, str], int] = {}           # (node, input name) -> link id
    socket_index: dict[tuple[int, str], int] = {}
    # Sockets first, so that links can name the target slot.
    for node in nodes:
        if node.text is not None:
            continue
        slots = [name for name, spec in ordered_inputs(definitions[node.type])
                 if not is_widget(spec) or name in node.links]
        socket_index.update({(node.id, name): i for i, name in enumerate(slots)})
    for node in nodes:
        for name, (source, slot) in node.links.items():
            link_type = definitions[by_id[source].type]["output"][slot]
            link_id = len(links) + 1
            links.append([link_id, source, slot, node.id, socket_index[(node.id, name)], link_type])
            outgoing.setdefault((source, slot), []).append(link_id)
            incoming[(node.id, name)] = link_id
    for order, node in enumerate(nodes):
        if node.text is not None:
            ui_nodes.append(note_node(node, order))
            continue
        info = definitions[node.type]
        added = added_widgets(node, info)
        unknown = set(node.widgets) - {name for name, _ in ordered_inputs(info)} - {name for name, _ in added}
        if unknown:
            raise KeyError(f"{node.type} has no widget {sorted(unknown)}")
        inputs, values, height = [], [], 30
        for name, spec in ordered_inputs(info):
            if name in node.links:
                entry = {"name": name, "type": widget_spec(spec)[0] if is_widget(spec) else spec[0],
                         "link": incoming[(node.id, name)]}
                if is_widget(spec):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            if not is_widget(spec):
                if name not in node.links:
                    inputs.append({"name": name, "type": spec[0], "link": None})
                continue
            value = node.widgets.get(name, default_value(spec))
            values.append(value)
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if options.get("control_after_generate"):
                values.append("fixed")
                height += 24
            height += 110 if options.get("multiline") else 26
        outputs = [{"name": info["output_name"][i], "type": kind, "slot_index": i,
                    "links": outgoing.get((node.id, i), [])} for i, kind in enumerate(info["output"])]
        height += 22 * max(len([i for i in inputs if "widget" not in i]), len(outputs))
        ui_node = {"id": node.id, "type": node.type, "pos": list(node.pos), "size": [node.width, height],
                   "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                   "properties": {"Node name for S&R": node.type}, "widgets_values": values}
        if node.type == VHS_VIDEO_COMBINE:                # VHS saves its widgets by name
            names = [name for name, spec in ordered_inputs(info) if is_widget(spec)]
            ui_node["widgets_values"] = {**dict(zip(names, values)),
                                         **{name: node.widgets.get(name, default_value(spec)) for name, spec in added}}
        elif added:
            raise NotImplementedError(f"{node.type}: widgets added by an extension, saved as a list")
        if node.title:
            ui_node["title"] = node.title
        ui_nodes.append(ui_node)
    return {"last_node_id": max(by_id), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4}


def live_definitions() -> dict:
    """Every node definition a workflow may use: a fresh ComfyUI server's /object_info (this package and
    core) and the documented third-party nodes."""
    from .server import ComfyServer
    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(base).start()
        try:
            return {**THIRD_PARTY_DEFS, **server.object_info()}
        finally:
            server.stop()
