"""Run one job on the local ComfyUI and describe its outcome.

A `prompt` job is posted to the local `/prompt` under the worker's websocket
client id, after its input pictures were copied from the gateway's store
(`/upload/image`); the websocket is followed until ComfyUI's end-of-prompt
message, relaying every message of that prompt, then the history entry is
read. An `http` job (the A1111 and workflow routes) is the route's own call,
made in a thread while the websocket is relayed. Both stop early when the job
is cancelled (its client went away): the local prompt is interrupted and
taken off the queue, so nothing runs for nobody.

The outcome is a plain dict (the gateway's answer), stored by the task.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Callable, Optional

import redis
import requests
import websocket

from . import keys
from .comfy_link import ComfyGone, LocalComfy
from .events import Relay

log = logging.getLogger(__name__)

TICK_S = 0.5
CANCEL_GRACE_S = 10.0  # how long a cancelled job may take to stop before the worker moves on
IMAGE_INPUTS = ("image",)


def _input_pictures(graph: dict) -> set[str]:
    names = set()
    for node in graph.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        for key in IMAGE_INPUTS:
            value = inputs.get(key)
            if isinstance(value, str) and value and "/" not in value and "\\" not in value:
                names.add(value)
    return names


def upload_inputs(r: redis.Redis, comfy: LocalComfy, graph: dict) -> list[str]:
    """Copy the pictures the graph loads, which clients uploaded to the gateway, to this ComfyUI."""
    names = sorted(_input_pictures(graph))
    if not names:
        return []
    blobs = r.mget([keys.upload(n) for n in names])
    sent = []
    for name, blob in zip(names, blobs):
        if blob is not None:  # else: a picture the worker's own input folder holds
            comfy.upload_image(name, blob)
            sent.append(name)
    return sent


def rewrite_image_refs(outputs: dict, worker: str) -> dict:
    """Image references carry the worker in front of their subfolder, so GET /view finds it."""
    out = {}
    for node_id, node_out in outputs.items():
        node_out = dict(node_out)
        for key, refs in node_out.items():
            if isinstance(refs, list) and refs and all(isinstance(x, dict) and "filename" in x for x in refs):
                node_out[key] = [{**ref, "subfolder": "/".join(p for p in (worker, ref.get("subfolder", "")) if p)}
                                 for ref in refs]
        out[node_id] = node_out
    return out


class Follower:
    """Reads the websocket until `finished()`; relays, watches for cancel and for a dead ComfyUI."""

    def __init__(self, ws: websocket.WebSocket, relay: Relay, cancelled: Callable[[], bool],
                 on_cancel: Callable[[], None], timeout: float):
        self.ws, self.relay, self.cancelled, self.on_cancel = ws, relay, cancelled, on_cancel
        self.deadline = time.monotonic() + timeout
        self.was_cancelled = False
        self._next_check = 0.0

    def _check(self) -> bool:
        self._next_check = time.monotonic() + TICK_S
        return self.cancelled()

    def run(self, wanted: Callable[[dict], bool], finished: Callable[[Optional[dict]], bool]) -> None:
        self.ws.settimeout(TICK_S)
        while not finished(None):
            if time.monotonic() > self.deadline:
                if self.was_cancelled:
                    return  # a prompt taken off the queue before it started sends nothing more
                raise TimeoutError("the job ran past DS_CLUSTER_JOB_TIMEOUT")
            if not self.was_cancelled and time.monotonic() >= self._next_check and self._check():
                self.was_cancelled = True
                self.deadline = min(self.deadline, time.monotonic() + CANCEL_GRACE_S)
                self.on_cancel()
            try:
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException) as exc:
                raise ComfyGone(f"ComfyUI's websocket closed mid-job: {exc}") from exc
            if isinstance(frame, bytes):
                self.relay.binary(frame)
                continue
            if not frame:
                raise ComfyGone("ComfyUI's websocket closed mid-job")
            message = json.loads(frame)
            if wanted(message):
                if finished(message):
                    return
                self.relay.message(message)


class JobRunner:
    def __init__(self, r: redis.Redis, comfy: LocalComfy, worker: str, job_timeout: float):
        self.redis, self.comfy, self.worker, self.job_timeout = r, comfy, worker, job_timeout

    def _cancelled_check(self, prompt_id: str) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return self.redis.hget(keys.job(prompt_id), "state") == "cancelled"
            except redis.RedisError:
                return False
        return check

    def run(self, prompt_id: str, job: dict, relay: Relay) -> dict:
        payload = json.loads(job["payload"])
        if job["kind"] == keys.KIND_PROMPT:
            return self.run_prompt(prompt_id, payload, relay)
        return self.run_http(prompt_id, payload, relay)

    # --------------------------------------------------------------- /prompt
    def run_prompt(self, prompt_id: str, payload: dict, relay: Relay) -> dict:
        graph = payload["prompt"]
        upload_inputs(self.redis, self.comfy, graph)
        client_id = uuid.uuid4().hex
        ws = self.comfy.open_ws(client_id)
        try:
            response = self.comfy.post_prompt(graph, client_id)
            if response.status_code != 200:
                return self._refused(prompt_id, graph, response)
            local_id = response.json()["prompt_id"]

            def on_cancel() -> None:
                log.info("job %s cancelled by its client: interrupting local prompt %s", prompt_id, local_id)
                self.comfy.delete_queued([local_id])
                self.comfy.interrupt(local_id)

            def wanted(message: dict) -> bool:
                data = message.get("data")
                return isinstance(data, dict) and data.get("prompt_id") == local_id

            def finished(message: Optional[dict]) -> bool:
                if message is None:
                    return False
                data = message.get("data") or {}
                return message.get("type") == "executing" and data.get("node") is None

            follower = Follower(ws, relay, self._cancelled_check(prompt_id), on_cancel, self.job_timeout)
            follower.run(wanted, finished)
        finally:
            ws.close()
        entry = self._history(local_id)
        if follower.was_cancelled:
            return {"state": "cancelled", "history": self._entry(prompt_id, entry, graph)}
        status = (entry.get("status") or {}).get("status_str")
        return {"state": "done" if status == "success" else "error", "history": self._entry(prompt_id, entry, graph)}

    def _history(self, local_id: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            entry = self.comfy.history(local_id)
            if entry or time.monotonic() > deadline:
                return entry
            time.sleep(0.1)

    def _entry(self, prompt_id: str, entry: dict, graph: dict) -> dict:
        entry = dict(entry)
        number = (entry.get("prompt") or [0])[0]
        entry["prompt"] = [number, prompt_id, graph, {}, list((entry.get("outputs") or {}).keys())]
        entry["outputs"] = rewrite_image_refs(entry.get("outputs") or {}, self.worker)
        status = entry.get("status")
        if isinstance(status, dict):  # its messages name the local prompt id
            status["messages"] = [[kind, {**data, "prompt_id": prompt_id} if isinstance(data, dict) and "prompt_id" in data
                                   else data] for kind, data in status.get("messages", [])]
        return entry

    def _refused(self, prompt_id: str, graph: dict, response: requests.Response) -> dict:
        """The local /prompt said no (a 400 with node_errors): the job's own fault, never retried."""
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"type": "http_error", "message": response.text[:2000]}, "node_errors": {}}
        error = body.get("error") or {}
        message = error.get("message", "invalid prompt") if isinstance(error, dict) else str(error)
        details = {"prompt_id": prompt_id, "node_id": None, "node_type": None, "exception_type": "ValidationError",
                   "exception_message": message, "error": error, "node_errors": body.get("node_errors", {}),
                   "http_status": response.status_code}
        entry = {"prompt": [0, prompt_id, graph, {}, []], "outputs": {},
                 "status": {"status_str": "error", "completed": False,
                            "messages": [["execution_error", details]]}, "meta": {}}
        return {"state": "error", "history": entry, "status": response.status_code, "body": body}

    # ---------------------------------------------------------------- routes
    def run_http(self, prompt_id: str, payload: dict, relay: Relay) -> dict:
        answer: dict = {}

        def call() -> None:
            try:
                response = self.comfy.request(payload["method"], payload["path"], json=payload.get("body"),
                                              timeout=self.job_timeout)
                answer["status"] = response.status_code
                try:
                    answer["body"] = response.json()
                except ValueError:
                    answer["body"] = {"error": "BadResponse", "detail": response.text[:2000]}
            except ComfyGone as exc:
                answer["gone"] = exc

        ws = self.comfy.open_ws(uuid.uuid4().hex)
        thread = threading.Thread(target=call, name=f"job-{prompt_id}", daemon=True)
        thread.start()
        try:
            interrupt_path = "/sdapi/v1/interrupt" if payload["path"].startswith("/sdapi/") else "/interrupt"

            def on_cancel() -> None:
                log.info("job %s cancelled by its client: interrupting %s", prompt_id, payload["path"])
                self.comfy.request("POST", interrupt_path, json={})

            def wanted(message: dict) -> bool:
                data = message.get("data")
                return isinstance(data, dict) and "prompt_id" in data

            follower = Follower(ws, relay, self._cancelled_check(prompt_id), on_cancel, self.job_timeout)
            follower.run(wanted, lambda message: not thread.is_alive())
            thread.join()
        finally:
            ws.close()
        if "gone" in answer:
            raise answer["gone"]
        if follower.was_cancelled:
            return {"state": "cancelled", **answer}
        return {"state": "done" if answer["status"] == 200 else "error", **answer}
