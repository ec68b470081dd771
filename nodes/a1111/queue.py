"""A1111 jobs on ComfyUI's own queue.

A request's graphs are validated with `execution.validate_prompt` and put on
`PromptServer.instance.prompt_queue` exactly as `POST /prompt` does, so they
show in the editor's queue and history, wait their turn behind other work and
can be cancelled from the editor. The handler then waits for the history
entry and reads the images from the output (or temp) folder.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import ApiError

log = logging.getLogger(__name__)

POLL_S = 0.05
HANDLER_NAME = "diffusers_studio_a1111"


@dataclass
class Job:
    id: str
    kind: str
    prompt_ids: list[str] = field(default_factory=list)
    sampler_steps: dict[str, dict[str, int]] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    started: Optional[float] = None
    index: int = 0
    interrupted: bool = False
    skipped: set = field(default_factory=set)
    preview: Any = None  # the latest preview (PIL image)
    timestamp: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S"))


JOBS: dict[str, Job] = {}


def _server():
    from server import PromptServer

    return PromptServer.instance


def _queue():
    return _server().prompt_queue


def running_prompt_ids() -> set[str]:
    running, _ = _queue().get_current_queue_volatile()
    return {item[1] for item in running}


def _pending_ids() -> set[str]:
    q = _queue()
    with q.mutex:
        return {item[1] for item in q.queue}


def current_job() -> Optional[Job]:
    """The A1111 job whose prompt runs now, else the first one waiting."""
    running = running_prompt_ids()
    for job in JOBS.values():
        if any(pid in running for pid in job.prompt_ids):
            return job
    return next(iter(JOBS.values()), None)


async def submit(job: Job, graph: dict, steps: dict[str, int], client_id: Optional[str] = None) -> str:
    """Validate and queue one graph as POST /prompt does; 400 with node errors if invalid.

    With a `client_id`, ComfyUI records the pictures of output nodes it did not
    rerun (their inputs unchanged since the last prompt) in the history too;
    without one it leaves them out, and a repeated request would get none
    back. Progress messages then go to that client only, not to every editor.
    """
    import execution

    server = _server()
    data = server.trigger_on_prompt({"prompt": graph})
    graph = data.get("prompt", graph)
    prompt_id = str(uuid.uuid4())
    valid = await execution.validate_prompt(prompt_id, graph, None)
    if not valid[0]:
        error = valid[1] or {}
        raise ApiError(400, error.get("message", "invalid prompt"), body={"error": error, "node_errors": valid[3]})
    number = server.number
    server.number += 1
    extra_data = {"create_time": int(time.time() * 1000)}
    if client_id:
        extra_data["client_id"] = client_id
    job.prompt_ids.append(prompt_id)
    job.sampler_steps[prompt_id] = steps
    server.prompt_queue.put((number, prompt_id, graph, extra_data, valid[2], {}))
    return prompt_id


def cancel_pending(job: Job) -> None:
    """Take the job's prompts that have not started off the queue."""
    q = _queue()
    ids = set(job.prompt_ids)
    while q.delete_queue_item(lambda item: item[1] in ids):
        pass


def _attach_preview_handler(job: Job, prompt_id: str) -> None:
    """Keep the job's latest latent preview for /progress (current_image)."""
    try:
        from comfy_execution import progress
    except ImportError:
        return
    registry = progress.get_progress_state()
    if registry.prompt_id != prompt_id or HANDLER_NAME in registry.handlers:
        return

    class _Keeper(progress.ProgressHandler):
        def update_handler(self, node_id, value, max_value, state, prompt_id, image=None):
            if image is not None:
                try:
                    job.preview = image[1]
                except (TypeError, IndexError):
                    pass

    keeper = _Keeper(HANDLER_NAME)
    keeper.set_registry(registry)
    # Replace the dict rather than insert: the worker thread may be iterating it.
    registry.handlers = {**registry.handlers, HANDLER_NAME: keeper}


async def wait(job: Job, prompt_id: str) -> Optional[dict]:
    """The history entry of `prompt_id` once it is done; None if it left the queue unrun."""
    import nodes

    q = _queue()
    last_nudge = 0.0
    while True:
        entry = q.get_history(prompt_id=prompt_id).get(prompt_id)
        if entry is not None:
            return entry
        running = running_prompt_ids()
        if prompt_id in running:
            if job.started is None:
                job.started = time.time()
            _attach_preview_handler(job, prompt_id)
            # An interrupt sent just before execution began is reset by the
            # executor; repeat it until the prompt ends.
            if (job.interrupted or prompt_id in job.skipped) and time.monotonic() - last_nudge > 0.5:
                nodes.interrupt_processing()
                last_nudge = time.monotonic()
        elif prompt_id not in _pending_ids():
            entry = q.get_history(prompt_id=prompt_id).get(prompt_id)
            if entry is not None:
                return entry
            return None  # deleted from the queue (POST /queue, or an interrupt)
        await asyncio.sleep(POLL_S)


def outcome(entry: Optional[dict]) -> str:
    """success, interrupted, error, or cancelled."""
    if entry is None:
        return "cancelled"
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return "success"
    for event, _ in status.get("messages", []):
        if event == "execution_interrupted":
            return "interrupted"
    return "error"


def execution_error(entry: dict) -> ApiError:
    for event, data in (entry.get("status") or {}).get("messages", []):
        if event == "execution_error":
            err = ApiError(500, "", error=data.get("exception_type", "RuntimeError").rsplit(".", 1)[-1])
            err.args = (data.get("exception_message", "").strip(),)
            err.body = {"node_id": data.get("node_id"), "node_type": data.get("node_type")}
            return err
    return ApiError(500, "the prompt failed", error="RuntimeError")


def image_paths(entry: dict, node_id: str) -> list[str]:
    """Paths of the images a SaveImage/PreviewImage node reported, inside ComfyUI's folders only."""
    import folder_paths

    paths = []
    for ref in (entry.get("outputs") or {}).get(node_id, {}).get("images", []):
        base = folder_paths.get_directory_by_type(ref.get("type", "output"))
        if base is None:
            continue
        base = os.path.abspath(base)
        path = os.path.abspath(os.path.join(base, ref.get("subfolder", ""), ref.get("filename", "")))
        if os.path.commonpath([base, path]) != base or not os.path.isfile(path):
            continue
        paths.append(path)
    return paths


def interrupt() -> None:
    """A1111's interrupt: stop the running A1111 job and drop its remaining batches."""
    import nodes

    running = running_prompt_ids()
    for job in JOBS.values():
        if any(pid in running for pid in job.prompt_ids):
            job.interrupted = True
            cancel_pending(job)
            nodes.interrupt_processing()


def skip() -> None:
    """A1111's skip: stop the running batch of the running A1111 job; later batches still run."""
    import nodes

    running = running_prompt_ids()
    for job in JOBS.values():
        for pid in job.prompt_ids:
            if pid in running:
                job.skipped.add(pid)
                nodes.interrupt_processing()


def progress_of(job: Optional[Job]) -> dict:
    """A1111's /progress numbers for `job` (None: idle)."""
    if job is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": {
            "skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
            "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}}
    from comfy_execution import progress

    running = running_prompt_ids()
    job_count = max(1, len(job.prompt_ids))
    job_no, step, steps = 0, 0, 0
    registry = progress.get_progress_state()
    for index, pid in enumerate(job.prompt_ids):
        if pid in running:
            job_no = index
            planned = job.sampler_steps.get(pid, {})
            for node_id, n in planned.items():
                state = registry.nodes.get(node_id) if registry.prompt_id == pid else None
                if state is not None:
                    steps += int(state.get("max") or n)
                    step += int(state.get("value") or 0)
                else:
                    steps += n
            break
        entry_done = _queue().get_history(prompt_id=pid)
        if entry_done:
            job_no = index + 1
    fraction = (job_no + (step / steps if steps else 0.0)) / job_count
    fraction = min(max(fraction, 0.0), 1.0)
    eta = 0.0
    if job.started and fraction > 0.01:
        elapsed = time.time() - job.started
        eta = max(0.0, elapsed / fraction - elapsed)
    return {"progress": fraction, "eta_relative": eta, "state": {
        "skipped": bool(job.skipped), "interrupted": job.interrupted, "stopping_generation": False,
        "job": f"scripts_{job.kind}", "job_count": job_count, "job_timestamp": job.timestamp,
        "job_no": min(job_no, job_count - 1), "sampling_step": step, "sampling_steps": steps}}
