"""Convert a UI-format workflow (what the editor saves) into an API-format prompt.

We ship workflows in the editor's format, because that is what users load;
`/prompt` takes the API format, which the editor produces when it queues.
The tests do the editor's conversion here, with the server's `/object_info`
as the only source of each node's inputs, so a workflow is tested exactly as
shipped and against the nodes the server really has:

- `widgets_values` fill the node's widget inputs in the schema's order
  (`input_order`), skipping the extra value of a `control_after_generate`
  widget (INT inputs with that option, or named seed/noise_seed when the
  option is absent, as the editor does; combos with that option) and the
  upload button's value after an upload combo.
- Links become `[source node id, output slot]`; a widget turned into a socket
  takes its link. Reroute nodes are followed, PrimitiveNode values are
  inlined, Note/MarkdownNote are dropped.
- Muted nodes (mode 2) are dropped with their links; bypassed nodes (mode 4)
  pass the first input of the matching type through, as the editor does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

EXAMPLE_WORKFLOWS = Path(__file__).resolve().parent.parent.parent / "example_workflows"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
UPLOAD_VALUES = {"image", "video", "audio", "animated_image"}
NOTE_TYPES = {"Note", "MarkdownNote"}
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


class WorkflowError(ValueError):
    """The workflow cannot be converted (unknown node type, broken link, ...)."""


def _links_by_id(workflow: dict) -> dict[int, tuple]:
    """link id -> (from node, from slot, to node, to slot, type); both saved shapes."""
    table = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            table[link["id"]] = (
                link["origin_id"],
                link["origin_slot"],
                link["target_id"],
                link["target_slot"],
                link.get("type"),
            )
        else:
            link_id, from_node, from_slot, to_node, to_slot, link_type = link[:6]
            table[link_id] = (from_node, from_slot, to_node, to_slot, link_type)
    return table


def _input_specs(info: dict) -> list[tuple[str, str, Any, dict]]:
    """(name, section, type, options) for every non-hidden input, in widget order."""
    sections = info.get("input", {})
    order = info.get("input_order") or {key: list(value) for key, value in sections.items()}
    specs = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = sections.get(section, {}).get(name)
            if spec is None:
                continue
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, section, kind, options))
    return specs


def is_widget(kind: Any, options: dict) -> bool:
    """Whether the editor shows this input as a widget (and saves its value)."""
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def has_control_widget(name: str, kind: Any, options: dict) -> bool:
    """Whether the editor adds a control_after_generate widget after this one."""
    if kind == "INT":
        control = options.get("control_after_generate")
        return bool(name in ("seed", "noise_seed") if control is None else control)
    if isinstance(kind, list) or kind == "COMBO":
        return bool(options.get("control_after_generate"))
    return False


def widget_values(node: dict, info: dict) -> dict[str, Any]:
    """Map a node's `widgets_values` onto its widget inputs' names."""
    saved = node.get("widgets_values")
    if isinstance(saved, dict):  # some nodes save a name -> value mapping
        return dict(saved)
    values = list(saved or [])
    mapped: dict[str, Any] = {}
    index = 0
    for name, _section, kind, options in _input_specs(info):
        if not is_widget(kind, options):
            continue
        if index >= len(values):
            break
        mapped[name] = values[index]
        index += 1
        if has_control_widget(name, kind, options) and index < len(values) and values[index] in CONTROL_VALUES:
            index += 1
        if any(options.get(opt) for opt in UPLOAD_OPTIONS) and index < len(values) and values[index] in UPLOAD_VALUES:
            index += 1
    return mapped


def expected_widget_count(info: dict) -> int:
    """How many `widgets_values` the editor saves for a node of this schema."""
    count = 0
    for name, _section, kind, options in _input_specs(info):
        if not is_widget(kind, options):
            continue
        count += 1
        if has_control_widget(name, kind, options):
            count += 1
        if any(options.get(opt) for opt in UPLOAD_OPTIONS):
            count += 1
    return count


class _Graph:
    def __init__(self, workflow: dict, object_info: dict):
        if (workflow.get("definitions") or {}).get("subgraphs"):
            raise WorkflowError("workflows with subgraphs are not supported by this converter")
        self.object_info = object_info
        self.nodes = {node["id"]: node for node in workflow.get("nodes", [])}
        self.links = _links_by_id(workflow)

    def source(self, link_id: Optional[int], want_type: Optional[str] = None, seen: Optional[set] = None):
        """Resolve a link to (node id, slot) of a real node, or None if it leads nowhere.

        Follows Reroute nodes and bypassed nodes; a PrimitiveNode gives
        ("value", its value) since the editor inlines it.
        """
        if link_id is None:
            return None
        if link_id not in self.links:
            raise WorkflowError(f"link {link_id} is used by a node but missing from the links array")
        from_node, from_slot, _to, _slot, link_type = self.links[link_id]
        node = self.nodes.get(from_node)
        if node is None:
            raise WorkflowError(f"link {link_id} comes from node {from_node}, which is not in the workflow")
        seen = seen or set()
        if from_node in seen:
            raise WorkflowError(f"a cycle of reroute/bypassed nodes passes through node {from_node}")
        seen.add(from_node)
        node_type = node.get("type")
        mode = node.get("mode", MODE_ALWAYS)
        if node_type == "Reroute":
            inputs = node.get("inputs") or []
            return self.source(inputs[0].get("link") if inputs else None, want_type or link_type, seen)
        if node_type == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            wanted = want_type or link_type
            outputs = node.get("outputs") or []
            if from_slot < len(outputs) and outputs[from_slot].get("type"):
                wanted = outputs[from_slot]["type"]
            for candidate in node.get("inputs") or []:
                if candidate.get("link") is not None and candidate.get("type") == wanted:
                    return self.source(candidate["link"], wanted, seen)
            return None
        return (str(from_node), from_slot)

    def convert(self) -> dict:
        prompt: dict[str, dict] = {}
        for node_id, node in self.nodes.items():
            node_type = node.get("type")
            if node_type in NOTE_TYPES or node_type in ("Reroute", "PrimitiveNode"):
                continue
            if node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
                continue
            info = self.object_info.get(node_type)
            if info is None:
                raise WorkflowError(
                    f"node {node_id} has type {node_type!r}, which the server does not list in /object_info "
                    "(a missing custom node?)"
                )
            inputs: dict[str, Any] = widget_values(node, info)
            known = {name for name, *_ in _input_specs(info)}
            for socket in node.get("inputs") or []:
                name = socket.get("name")
                if socket.get("link") is None or name not in known:
                    continue
                resolved = self.source(socket["link"], socket.get("type"))
                if resolved is None:
                    continue  # from a muted node: a widget keeps its own value
                if resolved[0] == "value":
                    inputs[name] = resolved[1]
                else:
                    inputs[name] = [resolved[0], resolved[1]]
            entry = {"class_type": node_type, "inputs": inputs}
            title = node.get("title")
            entry["_meta"] = {"title": title or info.get("display_name") or node_type}
            prompt[str(node_id)] = entry
        return prompt


def to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """The API-format prompt (node id -> {class_type, inputs, _meta}) of a UI workflow."""
    return _Graph(workflow, object_info).convert()


def nodes_of_type(prompt: dict, class_type: str) -> list[tuple[str, dict]]:
    """(node id, node) for every node of one class in an API prompt, by id."""
    return sorted(
        ((node_id, node) for node_id, node in prompt.items() if node["class_type"] == class_type),
        key=lambda item: (len(item[0]), item[0]),
    )


def upstream(prompt: dict, node_id: str) -> Iterable[str]:
    """Every node that `node_id` depends on, nearest first (breadth-first)."""
    queue, seen = [node_id], {node_id}
    while queue:
        current = queue.pop(0)
        for value in prompt[current]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in prompt:
                if value[0] not in seen:
                    seen.add(value[0])
                    queue.append(value[0])
                    yield value[0]


def example_workflow_files(folder: Path = EXAMPLE_WORKFLOWS) -> list[Path]:
    """Every shipped workflow (found by glob, so a new file is tested the day it lands)."""
    return sorted(Path(folder).glob("*.json"))
