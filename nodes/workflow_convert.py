"""Saved workflows: finding them, and converting the editor's format to ComfyUI's API format.

The editor saves a graph (nodes with `widgets_values` lists, links, reroutes,
primitives, muted and bypassed nodes); `/prompt` takes the API format. The
conversion follows the editor's own rules, reading each node class's input
definitions from the running server (`nodes.NODE_CLASS_MAPPINGS`): widget
values in schema order, control_after_generate and upload values skipped,
reroutes followed, primitives inlined, muted nodes dropped, bypassed nodes
passed through. Doing it here, not in the browser, is what lets a saved
workflow run as an HTTP endpoint (workflow_endpoints.py).

Workflows are looked up by name only in two folders' listings (the user's
`<user dir>/default/workflows/` and the pack's `example_workflows/`), so no
path can be reached through a name; a user workflow shadows an example.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "example_workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
UPLOAD_VALUES = {"image", "video", "audio", "animated_image"}
NOTE_TYPES = {"Note", "MarkdownNote"}
FRONTEND_ONLY = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
MODE_NEVER, MODE_BYPASS = 2, 4
NAME_RE = re.compile(r"^[\w][\w .()+-]{0,127}$")


class WorkflowError(ValueError):
    """A workflow that cannot run, or a request that does not fit it (answered 422).

    `details` holds one `{"loc", "msg", "type"}` entry per problem, so a request
    with several bad inputs hears about all of them at once.
    """

    def __init__(self, message: str, loc: Optional[list] = None, status: int = 422,
                 details: Optional[list[dict]] = None):
        super().__init__(message)
        self.loc = loc or ["body"]
        self.status = status
        self.details = details or [{"loc": self.loc, "msg": message, "type": "value_error"}]


# ------------------------------------------------------------------ finding
def _user_dir() -> Optional[Path]:
    import folder_paths

    base = folder_paths.get_user_directory()
    return Path(base) / "default" / "workflows" if base else None


def workflow_files() -> dict[str, tuple[Path, str]]:
    """name -> (file, "user" | "example"); user workflows shadow examples."""
    found: dict[str, tuple[Path, str]] = {}
    for folder, source in ((EXAMPLES_DIR, "example"), (_user_dir(), "user")):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if path.is_file() and NAME_RE.match(path.stem):
                found[path.stem] = (path, source)
    return dict(sorted(found.items()))


def load_workflow(name: str) -> tuple[dict, str]:
    entry = workflow_files().get(name)
    if entry is None:
        raise WorkflowError(f"workflow {name!r} not found; GET /diffusers_studio/workflows lists them",
                            ["path", "name"], status=404)
    path, source = entry
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WorkflowError(f"workflow {name!r} cannot be read: {exc}", ["path", "name"]) from None
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowError(f"workflow {name!r} is not in the editor's format (no nodes list); save it from the "
                            "editor with Save, not Export (API)", ["path", "name"])
    return workflow, source


# --------------------------------------------------------------- conversion
def display_name(node_type: str) -> str:
    """The name the editor shows on an untitled node (ComfyUI's display-name table, else the type)."""
    import nodes

    return nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_type) or node_type


def _schema(node_type: str) -> dict:
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS.get(node_type)
    if cls is None:
        raise WorkflowError(f"the workflow uses node type {node_type!r}, which this server lacks "
                            "(a missing custom node?)")
    return cls.INPUT_TYPES()


def input_specs(schema: dict) -> list[tuple[str, Any, dict]]:
    """(name, type, options) of every required and optional input, in widget order."""
    specs = []
    for section in ("required", "optional"):
        for name, spec in (schema.get(section) or {}).items():
            kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
            options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, kind, options))
    return specs


def is_widget(kind: Any, options: dict) -> bool:
    if options.get("forceInput"):
        return False
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _has_control(name: str, kind: Any, options: dict) -> bool:
    if kind == "INT":
        control = options.get("control_after_generate")
        return bool(name in ("seed", "noise_seed") if control is None else control)
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        return bool(options.get("control_after_generate"))
    return False


def widget_values(node: dict, specs: list) -> dict[str, Any]:
    saved = node.get("widgets_values")
    if isinstance(saved, dict):
        return dict(saved)
    values = list(saved or [])
    mapped: dict[str, Any] = {}
    index = 0
    for name, kind, options in specs:
        if not is_widget(kind, options):
            continue
        if index >= len(values):
            break
        mapped[name] = values[index]
        index += 1
        if _has_control(name, kind, options) and index < len(values) and values[index] in CONTROL_VALUES:
            index += 1
        if any(options.get(opt) for opt in UPLOAD_OPTIONS) and index < len(values) and values[index] in UPLOAD_VALUES:
            index += 1
    return mapped


def _links(workflow: dict) -> dict:
    table = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            table[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                                 link.get("type"))
        elif isinstance(link, list) and len(link) >= 6:
            table[link[0]] = tuple(link[1:6])
    return table


class Converter:
    """UI format -> API format, with the node classes' schemas."""

    def __init__(self, workflow: dict):
        if (workflow.get("definitions") or {}).get("subgraphs"):
            raise WorkflowError("workflows with subgraphs cannot be run as endpoints yet; unpack the subgraph")
        self.nodes = {node["id"]: node for node in workflow["nodes"] if isinstance(node, dict) and "id" in node}
        self.links = _links(workflow)
        self.schemas: dict[str, dict] = {}

    def specs(self, node_type: str) -> list:
        if node_type not in self.schemas:
            self.schemas[node_type] = _schema(node_type)
        return input_specs(self.schemas[node_type])

    def source(self, link_id, want_type=None, seen=None):
        if link_id is None:
            return None
        if link_id not in self.links:
            raise WorkflowError(f"link {link_id} is used by a node but missing from the workflow's links")
        from_node, from_slot, _to, _slot, link_type = self.links[link_id]
        node = self.nodes.get(from_node)
        if node is None:
            raise WorkflowError(f"link {link_id} comes from node {from_node}, which is not in the workflow")
        seen = seen or set()
        if from_node in seen:
            raise WorkflowError(f"a cycle of reroute/bypassed nodes passes through node {from_node}")
        seen.add(from_node)
        node_type, mode = node.get("type"), node.get("mode", 0)
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
            if node_type in FRONTEND_ONLY:
                continue
            if node.get("mode", 0) in (MODE_NEVER, MODE_BYPASS):
                continue
            specs = self.specs(node_type)
            inputs = widget_values(node, specs)
            known = {name for name, *_ in specs}
            for socket in node.get("inputs") or []:
                name = socket.get("name")
                if socket.get("link") is None or name not in known:
                    continue
                resolved = self.source(socket["link"], socket.get("type"))
                if resolved is None:
                    continue
                inputs[name] = resolved[1] if resolved[0] == "value" else [resolved[0], resolved[1]]
            prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs,
                                    "_meta": {"title": node.get("title") or node_type}}
        return prompt
