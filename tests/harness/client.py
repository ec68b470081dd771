"""A small client for ComfyUI's HTTP and websocket API, as the editor uses it.

The editor queues a prompt with its websocket `client_id` and learns what
happens from the websocket: `execution_start`, `executing`, `progress`,
`executed`, `execution_error`, `execution_interrupted`, binary preview frames,
and finally `executing` with `node: None` when the prompt is done. `run()`
does exactly that, so the tests see the messages a user's editor would see.
"""
from __future__ import annotations

import io
import json
import logging
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import requests
import websocket

log = logging.getLogger(__name__)

# Binary websocket frames start with a big-endian event code (server.py).
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4


class RunTimeout(AssertionError):
    """A prompt did not finish in time (reported with the messages seen so far)."""


@dataclass
class RunResult:
    """What one queued prompt did, as seen on the websocket and in /history."""

    prompt_id: str
    messages: list[dict] = field(default_factory=list)
    preview_frames: int = 0
    history: dict = field(default_factory=dict)

    def of_type(self, kind: str) -> list[dict]:
        """The `data` of every message of one type, in order."""
        return [m.get("data", {}) for m in self.messages if m.get("type") == kind]

    @property
    def status(self) -> str:
        """success, error or interrupted."""
        if self.of_type("execution_error"):
            return "error"
        if self.of_type("execution_interrupted"):
            return "interrupted"
        return "success"

    @property
    def error(self) -> Optional[dict]:
        errors = self.of_type("execution_error")
        return errors[0] if errors else None

    @property
    def outputs(self) -> dict:
        """node id -> the node's UI output (`images`: [{filename, subfolder, type}])."""
        return self.history.get("outputs", {})

    def images(self) -> list[dict]:
        """Every image reference of every output node, in node order."""
        refs = []
        for node_id in sorted(self.outputs, key=_node_sort_key):
            refs.extend(self.outputs[node_id].get("images", []))
        return refs

    def executed_nodes(self) -> list[str]:
        return [d["node"] for d in self.of_type("executing") if d.get("node") is not None]

    def cached_nodes(self) -> list[str]:
        return [n for d in self.of_type("execution_cached") for n in d.get("nodes", [])]

    def summary(self) -> str:
        """The messages without the noisy ones, for assertion messages."""
        skip = {"progress", "progress_state", "status", "crystools.monitor"}
        lines = []
        for message in self.messages:
            kind, data = message.get("type"), dict(message.get("data") or {})
            if kind in skip:
                continue
            data.pop("prompt_id", None)
            data.pop("timestamp", None)
            if kind == "execution_error":
                frames = data.pop("traceback", None) or []
                data.pop("current_inputs", None)
                data.pop("current_outputs", None)
                lines.append(f"{kind}: {json.dumps(data, default=str)}")
                lines.append("  traceback (last frames):\n" + "".join(frames[-3:]))
            else:
                lines.append(f"{kind}: {json.dumps(data, default=str)[:500]}")
        progress = self.of_type("progress")
        if progress:
            lines.append(f"progress: {len(progress)} messages, last {progress[-1].get('value')}/{progress[-1].get('max')}")
        return "\n".join(lines)


def _node_sort_key(node_id: str):
    return (0, int(node_id), "") if str(node_id).isdigit() else (1, 0, str(node_id))


class ComfyClient:
    """HTTP and websocket calls to one ComfyUI server."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.ws_url = "ws" + self.url[len("http"):] + "/ws"
        self.timeout = timeout
        self._object_info: Optional[dict] = None

    # ------------------------------------------------------------------ HTTP
    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", self.timeout), **kwargs)

    def post(self, path: str, payload: Any = None, **kwargs) -> requests.Response:
        return requests.post(self.url + path, json=payload, timeout=kwargs.pop("timeout", self.timeout), **kwargs)

    def system_stats(self) -> dict:
        response = self.get("/system_stats")
        response.raise_for_status()
        return response.json()

    def object_info(self, refresh: bool = False) -> dict:
        """Every node's schema; cached, since a full listing takes a moment."""
        if self._object_info is None or refresh:
            response = self.get("/object_info", timeout=120)
            response.raise_for_status()
            self._object_info = response.json()
        return self._object_info

    def node_info(self, node_type: str) -> dict:
        response = self.get(f"/object_info/{node_type}")
        response.raise_for_status()
        return response.json().get(node_type, {})

    def post_prompt(self, prompt: dict, client_id: Optional[str] = None) -> requests.Response:
        """POST /prompt as the editor does; the raw response (a 400 is a result too)."""
        payload = {"prompt": prompt}
        if client_id:
            payload["client_id"] = client_id
        return self.post("/prompt", payload)

    def history(self, prompt_id: str) -> dict:
        response = self.get(f"/history/{prompt_id}")
        response.raise_for_status()
        return response.json().get(prompt_id, {})

    def view(self, image: dict) -> bytes:
        """The bytes of an output image, from its {filename, subfolder, type} reference."""
        params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image.get("type", "output")}
        response = self.get("/view", params=params)
        response.raise_for_status()
        return response.content

    def view_image(self, image: dict):
        from PIL import Image

        return Image.open(io.BytesIO(self.view(image)))

    def interrupt(self, prompt_id: Optional[str] = None) -> requests.Response:
        return self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> requests.Response:
        return self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def queue_remaining(self) -> int:
        return self.get("/prompt").json()["exec_info"]["queue_remaining"]

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the queue is empty, so that one test's run cannot leak into the next."""
        deadline = time.monotonic() + timeout
        while self.queue_remaining() > 0:
            if time.monotonic() > deadline:
                raise RunTimeout(f"the queue still holds {self.queue_remaining()} prompt(s) after {timeout:.0f} s")
            time.sleep(0.2)

    # ------------------------------------------------------------- websocket
    def run(
        self,
        prompt: dict,
        timeout: float = 120.0,
        on_message: Optional[Callable[[dict, "RunResult"], None]] = None,
    ) -> RunResult:
        """Queue `prompt` and follow it on the websocket until it is done.

        Done means `executing` with `node: None` for this prompt, which
        ComfyUI sends after success, error and interrupt alike. A prompt that
        fails validation raises AssertionError with the server's answer.
        `on_message(message, result_so_far)` sees every text message (the
        interrupt test uses it to cancel at the first progress step).
        """
        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"{self.ws_url}?clientId={client_id}", timeout=timeout)
        try:
            response = self.post_prompt(prompt, client_id)
            if response.status_code != 200:
                raise AssertionError(f"/prompt answered {response.status_code}: {response.text[:4000]}")
            result = RunResult(prompt_id=response.json()["prompt_id"])
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RunTimeout(f"prompt {result.prompt_id} not done after {timeout:.0f} s; saw:\n{result.summary()}")
                ws.settimeout(remaining)
                try:
                    frame = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                if isinstance(frame, bytes):
                    if len(frame) >= 4 and struct.unpack(">I", frame[:4])[0] in (
                        PREVIEW_IMAGE,
                        PREVIEW_IMAGE_WITH_METADATA,
                    ):
                        result.preview_frames += 1
                    continue
                message = json.loads(frame)
                data = message.get("data") or {}
                if data.get("prompt_id") not in (None, result.prompt_id):
                    continue  # another client's prompt
                result.messages.append(message)
                if on_message is not None:
                    on_message(message, result)
                if (
                    message.get("type") == "executing"
                    and data.get("node") is None
                    and data.get("prompt_id") == result.prompt_id
                ):
                    break
        finally:
            ws.close()
        result.history = self._history_when_written(result.prompt_id)
        return result

    def _history_when_written(self, prompt_id: str, timeout: float = 10.0) -> dict:
        # The history entry is written right after the last message is sent.
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry or time.monotonic() > deadline:
                return entry
            time.sleep(0.1)
