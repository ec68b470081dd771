"""Named inputs of a saved workflow: every widget of every node, under a name a person can read.

A client of a workflow endpoint cannot see node ids and should not need
them, so inputs are named after what the editor shows on each node:

- A node's name is its title, else its type's display name
  ("Diffusers Sampler", "Empty Latent Image").
- `<name>.<widget>` sets that widget ("Diffusers Sampler.seed");
  `<name>` alone sets the node's main widget: the picture of LoadImage /
  LoadImageMask (sent as base64), the value of a PrimitiveNode, else the
  first of text, seed, value, else the first widget.
- When several nodes show the same name, `<name>` and `<name>.<widget>` set
  all of them (as a shared title always did; titled ones only, where a title
  equals untitled nodes' display name), and `<name> #k` /
  `<name> #k.<widget>` set only the k-th of them, counted from 1 in order
  of node id. A numbered name that another node shows as its own name is
  left to that node.
- A widget fed by a link is not an input (the link gives its value); a
  PrimitiveNode is one, with the type, range and options of the widget it
  feeds. Notes, reroutes and muted nodes have no inputs.

Values are checked against each widget's type, range and options before
anything is queued; every mistake in a request is answered at once (422),
naming the input, the value and the fix, with close names suggested for an
unknown one.
"""
from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from .input_files import store_input_file
from .workflow_convert import (
    MODE_NEVER,
    NOTE_TYPES,
    Converter,
    WorkflowError,
    display_name,
    is_widget,
    widget_values,
)

IMAGE_NODES = {"LoadImage": "image", "LoadImageMask": "image"}
MAIN_WIDGETS = ("text", "seed", "value")
NO_INPUTS = NOTE_TYPES | {"Reroute"}


@dataclass(frozen=True)
class Target:
    """One widget a named input sets, with what it accepts and its saved value."""

    node_id: str
    widget: str
    info: dict
    default: Any


# ------------------------------------------------------------------ naming
def _id_order(node_id: Any) -> tuple:
    text = str(node_id)
    return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


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


def _main_widget(node_type: str, widgets: list[str]) -> Optional[str]:
    if node_type in IMAGE_NODES:
        return IMAGE_NODES[node_type]
    for name in MAIN_WIDGETS:
        if name in widgets:
            return name
    return widgets[0] if widgets else None


def _primitive_target(converter: Converter, node: dict) -> dict:
    """A PrimitiveNode takes the type, range and options of the first widget it feeds."""
    outputs = node.get("outputs") or []
    kind = outputs[0].get("type") if outputs else None
    for link_id in (outputs[0].get("links") or []) if outputs else []:
        link = converter.links.get(link_id)
        target = converter.nodes.get(link[2]) if link else None
        sockets = (target or {}).get("inputs") or []
        if target is None or link[3] >= len(sockets) or target.get("type") in NO_INPUTS | {"PrimitiveNode"}:
            continue
        widget = sockets[link[3]].get("name")
        for name, spec_kind, options in converter.specs(target["type"]):
            if name == widget:
                return _type_info(spec_kind, options, target["type"], name)
    return {"type": kind}


def _node_widgets(converter: Converter, node: dict) -> list[Target]:
    """The settable widgets of one node, in widget order."""
    node_id, node_type = str(node["id"]), node.get("type")
    if node_type == "PrimitiveNode":
        saved = node.get("widgets_values") or [None]
        return [Target(node_id, "value", _primitive_target(converter, node), saved[0])]
    specs = converter.specs(node_type)
    values = widget_values(node, specs)
    linked = {socket.get("name") for socket in node.get("inputs") or [] if socket.get("link") is not None}
    return [
        Target(node_id, name, _type_info(kind, options, node_type, name), values.get(name))
        for name, kind, options in specs
        if is_widget(kind, options) and name not in linked
    ]


def node_names(workflow_nodes: list[dict]) -> dict[str, list[str]]:
    """name -> the node ids (as strings) it addresses: shown names, and `#k` names where several share one.

    A title wins over a display name: where a title equals the display name
    of untitled nodes, the bare name sets the titled nodes only (as it did
    when only titles were names); the untitled ones keep their `#k` names.
    """
    shown: dict[str, list[dict]] = {}
    for node in sorted(workflow_nodes, key=lambda n: _id_order(n["id"])):
        shown.setdefault(node.get("title") or display_name(node.get("type")), []).append(node)
    names: dict[str, list[str]] = {}
    for name, group in shown.items():
        titled = [node for node in group if node.get("title")]
        names[name] = [str(node["id"]) for node in titled or group]
    for name, group in shown.items():
        if len(group) > 1:
            for rank, node in enumerate(group, start=1):
                names.setdefault(f"{name} #{rank}", [str(node["id"])])
    return names


def named_inputs(workflow: dict) -> dict[str, list[Target]]:
    """Every input name of `workflow` -> the widgets it sets."""
    converter = Converter(workflow)
    nodes = [
        node for node in converter.nodes.values()
        if node.get("type") not in NO_INPUTS and node.get("mode", 0) != MODE_NEVER
    ]
    widgets = {str(node["id"]): _node_widgets(converter, node) for node in nodes}
    types = {str(node["id"]): node.get("type") for node in nodes}
    found: dict[str, list[Target]] = {}
    for name, ids in node_names(nodes).items():
        for node_id in ids:
            targets = widgets[node_id]
            main = _main_widget(types[node_id], [target.widget for target in targets])
            for target in targets:
                keys = [f"{name}.{target.widget}"] + ([name] if target.widget == main else [])
                for key in keys:
                    entry = found.setdefault(key, [])
                    if target not in entry:
                        entry.append(target)
    return found


def describe_inputs(workflow: dict) -> dict[str, dict]:
    """What a client needs to send each input: type, range or options, the saved default, the node ids."""
    return {
        key: {**targets[0].info, "default": targets[0].default, "nodes": [target.node_id for target in targets]}
        for key, targets in named_inputs(workflow).items()
    }


# ------------------------------------------------------------------ values
def _fail(name: str, message: str) -> WorkflowError:
    return WorkflowError(f"{name}: {message}", ["body", name])


def _bounds(info: dict) -> str:
    low, high = info.get("min"), info.get("max")
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if low is not None:
        return f"of at least {low}"
    return f"of at most {high}" if high is not None else ""


def coerce(name: str, value: Any, info: dict) -> Any:
    """`value` as the widget described by `info` takes it; a WorkflowError saying the fix otherwise."""
    kind = info.get("type")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "INT":
        if not number or not math.isfinite(value) or int(value) != value:
            raise _fail(name, f"expected a whole number, got {value!r}; send a JSON integer {_bounds(info)}".rstrip())
        value = int(value)
    elif kind == "FLOAT":
        if not number or not math.isfinite(value):
            raise _fail(name, f"expected a number, got {value!r}; send a JSON number {_bounds(info)}".rstrip())
        value = float(value)
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        raise _fail(name, f"expected true or false, got {value!r}; send a JSON true or false")
    elif kind in ("STRING", "IMAGE") and not isinstance(value, str):
        what = "a base64 PNG or JPEG" if kind == "IMAGE" else "a JSON string"
        raise _fail(name, f"expected a string, got {value!r}; send {what}")
    elif kind == "COMBO" and info.get("options") and value not in info["options"]:
        options = [str(option) for option in info["options"]]
        close = difflib.get_close_matches(str(value), options, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        shown = ", ".join(map(repr, options[:30])) + (", ..." if len(options) > 30 else "")
        raise _fail(name, f"{value!r} is not one of the options; {hint}send one of {shown}")
    if kind in ("INT", "FLOAT") and (
        ("min" in info and value < info["min"]) or ("max" in info and value > info["max"])
    ):
        raise _fail(name, f"{value!r} is out of range; send a value {_bounds(info)}")
    return value


def suggestions(key: str, names: list[str]) -> list[str]:
    """Names close to an unknown `key`.

    A known node name with a misspelt widget is matched on the widget alone
    (every widget of "Diffusers Sampler" shares that long prefix, which would
    make them all look close); otherwise by spelling of the whole name, then
    the names setting a widget of the same name on other nodes.
    """
    node, _, widget = key.rpartition(".")
    widgets = [name[len(node) + 1:] for name in names if node and name.startswith(node + ".")]
    if widgets:
        return [f"{node}.{match}" for match in difflib.get_close_matches(widget, widgets, n=3, cutoff=0.6)]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    close += [name for name in names if name.lower() == key.lower() and name not in close]
    close += [name for name in names if name.lower().endswith("." + widget.lower()) and name not in close]
    return close[:5]


def _unknown(key: str, value: Any, names: list[str], workflow_name: str) -> dict:
    close = suggestions(key, names)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:60] + "...")
    message = f"unknown input {key!r} (value {shown}); {hint}GET /ds/workflows/{workflow_name} lists this workflow's inputs"
    return {"loc": ["body", key], "msg": message, "type": "value_error"}


def store_image(name: str, data: str) -> str:
    """Decode a base64 picture into ComfyUI's input folder; returns its LoadImage name."""
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
        raise _fail(name, f"not a base64 image ({str(exc)[:120]}); send a PNG or JPEG file as base64") from None
    png = out.getvalue()
    return store_input_file(f"ds_workflows/{hashlib.sha256(png).hexdigest()[:24]}.png", png)


def _checked(values: dict, available: dict[str, list[Target]], workflow_name: str) -> list[tuple[Target, Any]]:
    """Every (widget, value) to set; all the request's mistakes raised together."""
    names = list(available)
    settled: list[tuple[Target, Any]] = []
    problems: list[dict] = []
    for key, value in values.items():
        if key not in available:
            problems.append(_unknown(key, value, names, workflow_name))
            continue
        try:
            for target in available[key]:
                checked = coerce(key, value, target.info)
                if target.info.get("type") == "IMAGE":
                    checked = store_image(key, checked)
                settled.append((target, checked))
        except WorkflowError as exc:
            problems += exc.details
    if problems:
        raise WorkflowError("; ".join(problem["msg"] for problem in problems), problems[0]["loc"], details=problems)
    return settled


def build_prompt(workflow: dict, values: Any, workflow_name: str = "<name>") -> dict:
    """The API prompt of `workflow` with the named `values` set (`{"inputs": {...}}` or the mapping itself)."""
    available = named_inputs(workflow)
    if isinstance(values, dict) and set(values) == {"inputs"} and isinstance(values["inputs"], dict) \
            and "inputs" not in available:
        values = values["inputs"]
    if not isinstance(values, dict):
        raise WorkflowError(f"the body must be a JSON object of input names to values, got {type(values).__name__}; "
                            'send e.g. {"inputs": {"Positive prompt": "a cat"}}')
    settled = _checked(values, available, workflow_name)
    workflow = json.loads(json.dumps(workflow))  # primitives are set in the UI graph
    nodes_by_id = {str(node["id"]): node for node in workflow["nodes"] if isinstance(node, dict) and "id" in node}
    widgets: list[tuple[Target, Any]] = []
    for target, value in settled:
        node = nodes_by_id[target.node_id]
        if node.get("type") == "PrimitiveNode":
            saved = list(node.get("widgets_values") or [None])
            saved[0] = value
            node["widgets_values"] = saved
        else:
            widgets.append((target, value))
    prompt = Converter(workflow).convert()
    for target, value in widgets:
        if target.node_id in prompt:
            prompt[target.node_id]["inputs"][target.widget] = value
    return prompt
