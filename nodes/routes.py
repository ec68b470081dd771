"""The pack's HTTP routes on ComfyUI's own server (same host, port, origin checks).

`GET /diffusers_studio/models` reports which checkpoints the pack holds in
memory and on which device, so a user (or a test) can see that "Unload
models" / `POST /free` really released them. `GET /diffusers_studio/first_workflow`
serves the workflow `make run` opens on a first start (first_screen.py), and
a malformed `POST /prompt` body is answered 400 (prompt_body_guard.py).
"""
from __future__ import annotations

import gc
import logging

from aiohttp import web

from .engine.loading import checkpoint_cache

log = logging.getLogger(__name__)
_registered = False


async def loaded_models(request: web.Request) -> web.Response:
    # Models referenced only by reference cycles (module <-> its ModelPatcher)
    # die at the next collection; collect first so the answer is current.
    gc.collect()
    return web.json_response({"models": checkpoint_cache.describe()})


def register() -> None:
    """Add the routes to ComfyUI's route table (once; on_load may run again)."""
    global _registered
    if _registered:
        return
    from server import PromptServer

    PromptServer.instance.routes.get("/diffusers_studio/models")(loaded_models)
    from . import first_screen, prompt_body_guard

    first_screen.register(PromptServer.instance.routes)
    prompt_body_guard.install(PromptServer.instance.app)
    from . import a1111

    a1111.register(PromptServer.instance.routes)
    from . import workflow_endpoints

    workflow_endpoints.register(PromptServer.instance.routes)
    _registered = True
