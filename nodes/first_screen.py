"""The workflow `make run` shows on a first start, served to the pack's editor extension.

ComfyUI's stock first screen is its default graph (Load Checkpoint ->
KSampler -> Save Image), which picks the first file of models/checkpoints;
with the pack's demo models that file is one only the pack's loader reads,
so a newcomer's first Run failed. `make run` sets `DS_FIRST_WORKFLOW` to the
name of a shipped workflow (`txt2img_sd15`); `GET /diffusers_studio/first_workflow`
then answers `{"name": ..., "workflow": {...}}` and web/js/first_screen.js
shows that workflow instead of the stock graph, only when the browser holds
no saved workflow of the user's. Without the variable (a user's own ComfyUI
with the pack installed) the answer is `{"name": null, "workflow": null}`
and ComfyUI's first screen is left alone.

Only names of files in example_workflows/ are served: the variable never
becomes a path.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from aiohttp import web

log = logging.getLogger(__name__)

ENV_VAR = "DS_FIRST_WORKFLOW"
ROUTE = "/diffusers_studio/first_workflow"
WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "example_workflows"


def shipped_workflows(folder: Path = WORKFLOWS_DIR) -> dict[str, Path]:
    """Shipped workflow name (file stem) -> file."""
    return {path.stem: path for path in sorted(folder.glob("*.json"))}


def first_workflow(name: Optional[str], folder: Path = WORKFLOWS_DIR) -> Optional[dict]:
    """The named shipped workflow as `{"name", "workflow"}`, or None when none is asked for or known."""
    if not name:
        return None
    found = shipped_workflows(folder).get(name.removesuffix(".json"))
    if found is None:
        log.warning(
            "%s=%r is not a workflow in %s (known: %s); ComfyUI's own first screen stays",
            ENV_VAR, name, folder, ", ".join(shipped_workflows(folder)),
        )
        return None
    return {"name": found.stem, "workflow": json.loads(found.read_text(encoding="utf-8"))}


async def first_workflow_route(request: web.Request) -> web.Response:
    answer = first_workflow(os.environ.get(ENV_VAR))
    return web.json_response(answer or {"name": None, "workflow": None})


def register(routes: web.RouteTableDef) -> None:
    routes.get(ROUTE)(first_workflow_route)
