"""Saved workflows as HTTP endpoints with named inputs.

Every UI-format workflow in ComfyUI's user workflows folder
(`<user dir>/default/workflows/*.json`, what the editor's "Save" writes) and
in the pack's `example_workflows/` is an endpoint:

- `GET  /diffusers_studio/workflows` lists them with their named inputs;
  `GET /diffusers_studio/workflows/{name}` (also `GET /ds/workflows/{name}`)
  describes one.
- `POST /diffusers_studio/workflows/{name}` (also `POST /ds/workflows/{name}/run`)
  runs one. The JSON body maps input names to values (or is
  `{"inputs": {...}}`); the answer is `{"images": [base64 PNG...], "prompt_id": ...}`.

Input names come from the titles the user gave nodes in the editor: `Title`
sets the node's main widget (LoadImage/LoadImageMask: the picture, sent as
base64; PrimitiveNode: its value; else the first of text, seed, value, then
the first widget), `Title.input_name` sets any widget of the node. Several
nodes with one title are all set. Unknown names, wrong types and values
outside a widget's range or options are 422s naming the input.

The editor's format is converted to the API format here, from the node
classes' own input definitions (the same rules as the editor: widget values
in schema order, control_after_generate and upload values skipped, reroutes
followed, primitives inlined, muted nodes dropped, bypassed nodes passed
through). The prompt goes on ComfyUI's own queue, as `POST /prompt` does.

A user workflow shadows an example of the same name. Names are only ever
looked up in those two folders' listings, so no path can be reached through
them.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any, Optional

from aiohttp import web

from .http_guard import guarded

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "example_workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
UPLOAD_VALUES = {"image", "video", "audio", "animated_image"}
NOTE_TYPES = {"Note", "MarkdownNote"}
IMAGE_NODES = {"LoadImage": "image", "LoadImageMask": "image"}
MAIN_WIDGETS = ("text", "seed", "value")
MODE_NEVER, MODE_BYPASS = 2, 4
NAME_RE = re.compile(r"^[\w][\w .()+-]{0,127}$")


class WorkflowError(ValueError):
    """A workflow that cannot run, or a request that does not fit it (answered 422)."""

    def __init__(self, message: str, loc: Optional[list] = None, status: int = 422):
        super().__init__(message)
        self.loc = loc or ["body"]
        self.status = status


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
            if node_type in NOTE_TYPES or node_type in ("Reroute", "PrimitiveNode"):
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


# ------------------------------------------------------------ named inputs
def _main_widget(node: dict, specs: list) -> Optional[str]:
    node_type = node.get("type")
    if node_type == "PrimitiveNode":
        return "value"
    if node_type in IMAGE_NODES:
        return IMAGE_NODES[node_type]
    widgets = [name for name, kind, options in specs if is_widget(kind, options)]
    for name in MAIN_WIDGETS:
        if name in widgets:
            return name
    return widgets[0] if widgets else None


def _type_info(kind: Any, options: dict, node_type: str, name: str) -> dict:
    if IMAGE_NODES.get(node_type) == name:
        return {"type": "IMAGE", "format": "base64 PNG/JPEG"}
    if isinstance(kind, (list, tuple)):
        return {"type": "COMBO", "options": list(kind)}
    info: dict[str, Any] = {"type": kind}
    if kind == "COMBO":
        info["options"] = list(options.get("options") or [])
    for key in ("min", "max"):
        if key in options:
            info[key] = options[key]
    return info


def named_inputs(workflow: dict) -> dict[str, dict]:
    """name -> {"targets": [(node id, input)], "type": ..., "default": ...} for every titled node."""
    converter = Converter(workflow)
    found: dict[str, dict] = {}
    for node_id, node in converter.nodes.items():
        title, node_type = node.get("title"), node.get("type")
        if not title or node_type in NOTE_TYPES or node_type == "Reroute" or node.get("mode", 0) == MODE_NEVER:
            continue
        if node_type == "PrimitiveNode":
            outputs = node.get("outputs") or []
            kind = outputs[0].get("type") if outputs else None
            values = node.get("widgets_values") or [None]
            entry = found.setdefault(title, {"targets": [], "type": {"type": kind}, "default": values[0]})
            entry["targets"].append((str(node_id), "value"))
            continue
        specs = converter.specs(node_type)
        values = widget_values(node, specs)
        linked = {s.get("name") for s in node.get("inputs") or [] if s.get("link") is not None}
        main = _main_widget(node, specs)
        for name, kind, options in specs:
            if not is_widget(kind, options) or name in linked:
                continue
            info = {"targets": [(str(node_id), name)], "type": _type_info(kind, options, node_type, name),
                    "default": values.get(name)}
            keys = [f"{title}.{name}"] + ([title] if name == main else [])
            for key in keys:
                entry = found.setdefault(key, {"targets": [], "type": info["type"], "default": info["default"]})
                if (str(node_id), name) not in entry["targets"]:
                    entry["targets"].append((str(node_id), name))
    return found


def _coerce(name: str, value: Any, info: dict) -> Any:
    kind = info.get("type")
    loc = ["body", name]
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise WorkflowError(f"{name}: expected a whole number, got {value!r}", loc)
        value = int(value)
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WorkflowError(f"{name}: expected a number, got {value!r}", loc)
        value = float(value)
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            raise WorkflowError(f"{name}: expected true or false, got {value!r}", loc)
    elif kind in ("STRING", "IMAGE"):
        if not isinstance(value, str):
            raise WorkflowError(f"{name}: expected a string, got {value!r}", loc)
    elif kind == "COMBO":
        options = info.get("options") or []
        if value not in options:
            shown = ", ".join(map(str, options[:20]))
            raise WorkflowError(f"{name}: {value!r} is not one of the options ({shown})", loc)
    if kind in ("INT", "FLOAT"):
        if "min" in info and value < info["min"] or "max" in info and value > info["max"]:
            raise WorkflowError(f"{name}: {value!r} is outside {info.get('min')}..{info.get('max')}", loc)
    return value


def store_image(name: str, data: str) -> str:
    """Decode a base64 picture into ComfyUI's input folder; returns its LoadImage name."""
    import hashlib

    import folder_paths
    from PIL import Image

    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=False)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            out = io.BytesIO()
            image.save(out, format="PNG")
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise WorkflowError(f"{name}: not a base64 image ({str(exc)[:120]})", ["body", name]) from None
    png = out.getvalue()
    stored = f"ds_workflows/{hashlib.sha256(png).hexdigest()[:24]}.png"
    path = os.path.join(folder_paths.get_input_directory(), *stored.split("/"))
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(png)
        os.replace(tmp, path)
    return stored


def build_prompt(workflow: dict, values: dict) -> dict:
    """The API prompt of `workflow` with the named `values` set."""
    if not isinstance(values, dict):
        raise WorkflowError("the body must be a JSON object of input names to values")
    available = named_inputs(workflow)
    unknown = [key for key in values if key not in available]
    if unknown:
        raise WorkflowError(f"unknown input(s) {', '.join(map(repr, unknown))}; this workflow accepts "
                            f"{', '.join(available) or 'none (give nodes titles in the editor)'}",
                            ["body", unknown[0]])
    workflow = json.loads(json.dumps(workflow))  # primitives are set in the UI graph
    nodes_by_id = {str(node["id"]): node for node in workflow["nodes"] if isinstance(node, dict) and "id" in node}
    settled: list[tuple[str, str, Any]] = []
    for key, value in values.items():
        info = available[key]
        value = _coerce(key, value, info["type"])
        if info["type"].get("type") == "IMAGE":
            value = store_image(key, value)
        for node_id, name in info["targets"]:
            node = nodes_by_id[node_id]
            if node.get("type") == "PrimitiveNode":
                saved = list(node.get("widgets_values") or [None])
                saved[0] = value
                node["widgets_values"] = saved
            else:
                settled.append((node_id, name, value))
    prompt = Converter(workflow).convert()
    for node_id, name, value in settled:
        if node_id in prompt:
            prompt[node_id]["inputs"][name] = value
    return prompt


def describe(name: str) -> dict:
    workflow, source = load_workflow(name)
    inputs = {key: {**entry["type"], "default": entry["default"]} for key, entry in named_inputs(workflow).items()}
    return {"name": name, "source": source, "inputs": inputs}


# ------------------------------------------------------------------ routes
def _error(exc: WorkflowError) -> web.Response:
    return web.json_response({"detail": [{"loc": exc.loc, "msg": str(exc), "type": "value_error"}]},
                             status=exc.status)


def _handler(fn):
    """Workflow errors as 4xx answers, A1111-shaped errors (shared queue code) as theirs, the rest a 500."""
    from .a1111.errors import ApiError

    return guarded(
        {WorkflowError: _error, ApiError: lambda exc: exc.response()},
        lambda exc: web.json_response({"error": type(exc).__name__, "detail": str(exc)}, status=500),
        log,
        "workflow endpoint",
    )(fn)


@_handler
async def list_workflows(request: web.Request) -> web.Response:
    out = []
    for name in workflow_files():
        try:
            out.append(await asyncio.to_thread(describe, name))
        except WorkflowError as exc:
            out.append({"name": name, "error": str(exc)})
    return web.json_response({"workflows": out})


@_handler
async def get_workflow(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(describe, request.match_info["name"]))


@_handler
async def run_workflow(request: web.Request) -> web.Response:
    from .a1111 import queue

    name = request.match_info["name"]
    workflow, _source = await asyncio.to_thread(load_workflow, name)
    text = await request.text()
    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise WorkflowError(f"JSON decode error: {exc}") from None
    if isinstance(body, dict) and set(body) == {"inputs"} and isinstance(body["inputs"], dict) \
            and "inputs" not in named_inputs(workflow):
        body = body["inputs"]
    prompt = await asyncio.to_thread(build_prompt, workflow, body)
    job = queue.Job(id=f"workflow({uuid.uuid4().hex[:15]})", kind="workflow")
    try:
        prompt_id = await queue.submit(job, prompt, {})
        entry = await queue.wait(job, prompt_id)
    except asyncio.CancelledError:
        queue.cancel_pending(job)
        raise
    result = queue.outcome(entry)
    if result == "error":
        raise queue.execution_error(entry)
    encoded = []
    for node_id in sorted((entry or {}).get("outputs") or {}, key=lambda k: (len(k), k)):
        for path in queue.image_paths(entry, node_id):
            data = await asyncio.to_thread(Path(path).read_bytes)
            encoded.append(base64.b64encode(data).decode("ascii"))
    return web.json_response({"images": encoded, "prompt_id": prompt_id, "status": result})


ROUTES = [
    ("GET", "/diffusers_studio/workflows", list_workflows),
    ("GET", "/diffusers_studio/workflows/{name}", get_workflow),
    ("POST", "/diffusers_studio/workflows/{name}", run_workflow),
    ("GET", "/ds/workflows", list_workflows),
    ("GET", "/ds/workflows/{name}", get_workflow),
    ("POST", "/ds/workflows/{name}/run", run_workflow),
]


def register(routes: web.RouteTableDef) -> None:
    for method, path, handler in ROUTES:
        routes.route(method, path)(handler)
