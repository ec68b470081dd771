"""Saved workflows as HTTP endpoints with named inputs.

Every UI-format workflow in ComfyUI's user workflows folder
(`<user dir>/default/workflows/*.json`, what the editor's "Save" writes) and
in the pack's `example_workflows/` is an endpoint:

- `GET /ds/workflows` (also `/diffusers_studio/workflows`) lists them with
  their named inputs; `GET /ds/workflows/{name}` describes one: every input
  with its type, saved default, range or options, and the node ids it sets.
- `POST /ds/workflows/{name}/run` (also `POST /diffusers_studio/workflows/{name}`)
  runs one. The JSON body is `{"inputs": {...}}` (or the input mapping
  itself); the answer is `{"images": [base64 PNG...], "prompt_id": ...}`.

How inputs are named and checked: workflow_inputs.py. How the editor's
format becomes a prompt: workflow_convert.py. The prompt goes on ComfyUI's
own queue, as `POST /prompt` does, so it shows in the editor's queue and
history.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from pathlib import Path

from aiohttp import web

from .http_guard import guarded
from .workflow_convert import WorkflowError, load_workflow, workflow_files
from .workflow_inputs import build_prompt, describe_inputs

log = logging.getLogger(__name__)


def describe(name: str) -> dict:
    workflow, source = load_workflow(name)
    return {"name": name, "source": source, "inputs": describe_inputs(workflow)}


# ------------------------------------------------------------------ routes
def _error(exc: WorkflowError) -> web.Response:
    return web.json_response({"detail": exc.details}, status=exc.status)


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
        raise WorkflowError(f'the body is not JSON ({exc}); send e.g. {{"inputs": {{"Positive prompt": "a cat"}}}} '
                            "with Content-Type: application/json") from None
    prompt = await asyncio.to_thread(build_prompt, workflow, body, name)
    job = queue.Job(id=f"workflow({uuid.uuid4().hex[:15]})", kind="workflow")
    try:
        # A client id of its own, so that a run whose outputs ComfyUI serves
        # from its cache (the same inputs again) still answers its pictures.
        prompt_id = await queue.submit(job, prompt, {}, client_id=job.id)
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
