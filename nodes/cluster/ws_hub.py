"""The gateway's /ws: ComfyUI's websocket, fed by the workers' relayed events.

A client connects as it would to one ComfyUI (`/ws?clientId=...`), gets the
usual `status` greeting, then the messages of the prompts it queued with that
client id, wherever they run. One Redis subscription per gateway process
feeds every socket; it reconnects by itself when Redis restarts.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections import defaultdict

import redis.asyncio as aioredis
from aiohttp import WSMsgType, web

from . import keys

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, r: aioredis.Redis):
        self.redis = r
        self.sockets: dict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for group in list(self.sockets.values()):
            for ws in list(group):
                await ws.close()

    async def handle(self, request: web.Request, queue_remaining: int) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[client_id].add(ws)
        try:
            await ws.send_json({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": queue_remaining}},
                                                           "sid": client_id}})
            async for message in ws:  # clients send nothing useful; keep the socket open
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            self.sockets[client_id].discard(ws)
            if not self.sockets[client_id]:
                del self.sockets[client_id]
        return ws

    async def deliver(self, event: dict) -> None:
        client_id = event.get("client_id")
        targets = list(self.sockets.get(client_id, ())) if client_id else [
            ws for group in self.sockets.values() for ws in group]
        for ws in targets:
            try:
                if "binary" in event:
                    await ws.send_bytes(base64.b64decode(event["binary"]))
                else:
                    await ws.send_json(event["message"])
            except (ConnectionError, RuntimeError):
                pass  # the client went away; its handler cleans up

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                pubsub = self.redis.pubsub()
                await pubsub.subscribe(keys.EVENTS_CHANNEL)
                delay = 0.2
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        await self.deliver(json.loads(item["data"]))
            except asyncio.CancelledError:
                raise
            except (aioredis.ConnectionError, OSError) as exc:
                log.warning("progress relay lost Redis (%s); resubscribing", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
