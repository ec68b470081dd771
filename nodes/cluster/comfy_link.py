"""The worker's line to its own ComfyUI: HTTP calls and the websocket.

Everything here is synchronous (the Celery task runs in the worker's main
thread, one job at a time). A ComfyUI that cannot be reached raises
`ComfyGone`, which the task treats as the worker's failure (the job goes to
another worker), never as the job's.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import requests
import websocket

log = logging.getLogger(__name__)


class ComfyGone(RuntimeError):
    """The local ComfyUI does not answer (killed, restarting, wrong URL)."""


class LocalComfy:
    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.ws_url = "ws" + self.url[len("http"):] + "/ws"
        self.timeout = timeout

    def request(self, method: str, path: str, timeout: Optional[float] = None, **kwargs) -> requests.Response:
        try:
            return requests.request(method, self.url + path, timeout=timeout or self.timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ComfyGone(f"ComfyUI at {self.url} does not answer {method} {path}: {exc}") from exc

    def healthy(self, timeout: float = 5.0) -> bool:
        try:
            return self.request("GET", "/system_stats", timeout=timeout).status_code == 200
        except ComfyGone:
            return False

    def loaded_models(self, timeout: float = 5.0) -> list[str]:
        """File names of the checkpoints the pack holds in memory (GET /diffusers_studio/models)."""
        response = self.request("GET", "/diffusers_studio/models", timeout=timeout)
        if response.status_code != 200:
            return []
        names = set()
        for entry in response.json().get("models", []):
            for value in (entry.get("name"), entry.get("path")):
                if value:
                    names.add(str(value).replace("\\", "/").rsplit("/", 1)[-1])
        return sorted(names)

    def upload_image(self, name: str, data: bytes) -> None:
        files = {"image": (name, data, "application/octet-stream")}
        response = self.request("POST", "/upload/image", files=files, data={"overwrite": "true", "type": "input"})
        if response.status_code != 200:
            raise RuntimeError(f"uploading {name!r} to {self.url} failed: {response.status_code} {response.text[:300]}")

    def post_prompt(self, graph: dict, client_id: str) -> requests.Response:
        return self.request("POST", "/prompt", json={"prompt": graph, "client_id": client_id})

    def history(self, prompt_id: str) -> dict:
        response = self.request("GET", f"/history/{prompt_id}")
        return response.json().get(prompt_id, {}) if response.status_code == 200 else {}

    def interrupt(self, prompt_id: Optional[str] = None) -> None:
        body: dict[str, Any] = {"prompt_id": prompt_id} if prompt_id else {}
        self.request("POST", "/interrupt", json=body)

    def delete_queued(self, prompt_ids: list[str]) -> None:
        self.request("POST", "/queue", json={"delete": prompt_ids})

    def clear(self, settle_s: float = 120.0) -> None:
        """Drop what waits on the queue and stop what runs: prompts left by a killed worker.

        An interrupt takes effect at the prompt's next cancel check (a whole
        model call on a slow machine), so wait until the queue is empty: a job
        taken before then would queue behind the dying prompt.
        """
        self.request("POST", "/queue", json={"clear": True})
        self.interrupt()
        deadline = time.monotonic() + settle_s
        while True:
            queue = self.request("GET", "/queue").json()
            if not queue.get("queue_running") and not queue.get("queue_pending"):
                return
            if time.monotonic() > deadline:
                log.warning("ComfyUI at %s still busy %.0f s after clear: %s", self.url, settle_s, queue)
                return
            time.sleep(0.2)

    def open_ws(self, client_id: str, timeout: float = 10.0) -> websocket.WebSocket:
        try:
            return websocket.create_connection(f"{self.ws_url}?clientId={client_id}", timeout=timeout)
        except (OSError, websocket.WebSocketException) as exc:
            raise ComfyGone(f"ComfyUI at {self.url} refuses its websocket: {exc}") from exc
