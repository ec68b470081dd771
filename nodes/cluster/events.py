"""Progress relay: the worker republishes its ComfyUI's websocket on Redis.

Each event is one pub/sub message on `ds:events`: `{"client_id", "prompt_id",
"message"}` for a text frame (the message's `prompt_id` already rewritten to
the gateway's id) or `{"client_id", "prompt_id", "binary"}` (base64) for a
preview frame. The gateway sends it to that client's websocket, or to every
client when `client_id` is null (what ComfyUI does for prompts queued without
one). Pub/sub keeps nothing: a client that is not connected misses progress,
as with a single ComfyUI; results are kept elsewhere (keys.result).
"""
from __future__ import annotations

import base64
import json
import logging
from typing import Optional

import redis

from . import keys

log = logging.getLogger(__name__)


class Relay:
    def __init__(self, client: redis.Redis, prompt_id: str, client_id: Optional[str]):
        self.redis = client
        self.prompt_id = prompt_id
        self.client_id = client_id or None

    def _publish(self, event: dict) -> None:
        try:
            self.redis.publish(keys.EVENTS_CHANNEL, json.dumps(event))
        except redis.RedisError as exc:  # progress is best effort; results are not
            log.warning("progress for %s not relayed: %s", self.prompt_id, exc)

    def message(self, message: dict) -> None:
        data = message.get("data")
        if isinstance(data, dict) and "prompt_id" in data:
            message = {**message, "data": {**data, "prompt_id": self.prompt_id}}
        self._publish({"client_id": self.client_id, "prompt_id": self.prompt_id, "message": message})

    def binary(self, frame: bytes) -> None:
        self._publish({"client_id": self.client_id, "prompt_id": self.prompt_id,
                       "binary": base64.b64encode(frame).decode("ascii")})

    def done(self) -> None:
        """ComfyUI's end-of-prompt message, sent once the result is stored."""
        self.message({"type": "executing", "data": {"node": None, "prompt_id": self.prompt_id}})
