"""A 400, not a 500, for a `POST /prompt` body that is not a JSON object.

ComfyUI's own `/prompt` handler starts with `await request.json()`; a body
that does not parse (a typo in a hand-written curl command, a truncated
file, an empty body) raises there and aiohttp answers 500 "Server got itself
in trouble", which reads as a crash. This middleware, added to ComfyUI's app
by the pack, looks at `POST /prompt` and `POST /api/prompt` only: when the
body is not valid JSON, or is JSON but not an object, it answers 400 in
ComfyUI's own error shape (`{"error": {type, message, details,
extra_info}, "node_errors": {}}`), naming what is wrong and the fix. Any
body that parses to an object goes to ComfyUI's handler untouched (aiohttp
keeps the bytes read here for the handler), and every other route is passed
through without being looked at.
"""
from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable, Optional

from aiohttp import web

log = logging.getLogger(__name__)

PROMPT_PATHS = ("/prompt", "/api/prompt")
_FIX = (
    'Send a JSON object such as {"prompt": {"1": {"class_type": "...", "inputs": {...}}}} '
    "with Content-Type: application/json (ComfyUI's API format; the editor's "
    "Export (API) writes one)."
)


def body_problem(body: bytes) -> Optional[str]:
    """What is wrong with a /prompt body, or None when it is a JSON object."""
    if not body.strip():
        return "the request body is empty"
    try:
        text = body.decode("utf-8")  # as aiohttp's request.json() reads it
    except UnicodeDecodeError as exc:
        return f"the request body is not UTF-8 text ({exc.reason} at byte {exc.start})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if not isinstance(value, dict):
        return f"the request body is JSON but a {type(value).__name__}, not an object"
    return None


def invalid_body_response(problem: str) -> web.Response:
    message = f"POST /prompt: {problem}."
    error = {"type": "invalid_prompt_body", "message": message, "details": _FIX, "extra_info": {}}
    return web.json_response({"error": error, "node_errors": {}}, status=400)


@web.middleware
async def prompt_body_guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.method == "POST" and request.path in PROMPT_PATHS:
        problem = body_problem(await request.read())
        if problem is not None:
            log.warning("POST %s refused with 400: %s", request.path, problem)
            return invalid_body_response(problem)
    return await handler(request)


def install(app: web.Application) -> bool:
    """Add the guard to ComfyUI's app (once). False when the app already serves (middlewares frozen)."""
    if prompt_body_guard in app.middlewares:
        return True
    if app.middlewares.frozen:
        log.warning("ComfyUI's server already runs: malformed POST /prompt bodies keep ComfyUI's 500")
        return False
    app.middlewares.append(prompt_body_guard)
    return True
