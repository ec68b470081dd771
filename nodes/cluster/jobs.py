"""The gateway's side of a job: record it, send it, wait for it, cancel it.

A request id (header `X-Request-Id`, or `request_id` in a /prompt body) makes
a resubmission idempotent: it maps to the prompt id of the first submission
(for `result_ttl`), so a client that retries after a dropped connection gets
the same job and, once done, the same pictures, not a second run. Only a job
that was cancelled (its client went away) is started afresh under that id.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Optional

import redis.asyncio as aioredis
from celery import Celery

from . import keys, routing
from .config import Settings
from .rescue import send

log = logging.getLogger(__name__)
MAX_REQUEST_ID = 200

CANCEL_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'gone' end
if state == 'done' or state == 'error' or state == 'cancelled' then return state end
redis.call('HSET', KEYS[1], 'state', 'cancelled')
redis.call('SREM', KEYS[2], ARGV[1])
return 'cancelled'
"""


class QueueFull(RuntimeError):
    pass


class Jobs:
    def __init__(self, r: aioredis.Redis, app: Celery, settings: Settings):
        self.redis, self.app, self.settings = r, app, settings

    async def depth(self) -> int:
        return await self.redis.scard(keys.ACTIVE)

    async def submit(self, kind: str, payload: dict, *, request_id: Optional[str], client_id: Optional[str],
                     models: set[str]) -> tuple[str, bool]:
        """(prompt_id, new): an existing job for a known request id, else a new queued one."""
        if request_id is not None:
            if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
                raise ValueError(f"request id {str(request_id)[:50]!r} must be a string of 1 to {MAX_REQUEST_ID} "
                                 "characters; send e.g. a UUID in X-Request-Id")
            existing = await self.redis.get(keys.request(request_id))
            if existing and await self.redis.hget(keys.job(existing), "state") not in (None, "cancelled"):
                return existing, False
        if await self.depth() >= self.settings.max_queue:
            raise QueueFull(f"{self.settings.max_queue} jobs are waiting or running (DS_CLUSTER_MAX_QUEUE)")
        prompt_id = str(uuid.uuid4())
        queue = await routing.choose_queue(self.redis, models)
        record = {"kind": kind, "payload": json.dumps(payload), "state": "queued", "queue": "",
                  "client_id": client_id or "", "request_id": request_id or "", "created": time.time(),
                  "attempts": 0, "rescues": 0, "worker": ""}
        pipe = self.redis.pipeline()
        pipe.hset(keys.job(prompt_id), mapping=record)
        pipe.expire(keys.job(prompt_id), int(self.settings.result_ttl))
        await pipe.execute()
        if request_id is not None:
            # The record exists before the request id points at it, so a twin that loses
            # the race below always finds a live record behind the winner's id.
            ttl = int(self.settings.result_ttl)
            if not await self.redis.set(keys.request(request_id), prompt_id, ex=ttl, nx=True):
                existing = await self.redis.get(keys.request(request_id))
                if existing and await self.redis.hget(keys.job(existing), "state") not in (None, "cancelled"):
                    await self.redis.delete(keys.job(prompt_id))
                    return existing, False
                await self.redis.set(keys.request(request_id), prompt_id, ex=ttl)
        pipe = self.redis.pipeline()
        pipe.sadd(keys.ACTIVE, prompt_id)
        if kind == keys.KIND_PROMPT:
            pipe.lpush(keys.HISTORY, prompt_id)
            pipe.ltrim(keys.HISTORY, 0, self.settings.history_size - 1)
        await pipe.execute()
        await asyncio.get_running_loop().run_in_executor(None, send, self.app, prompt_id, queue)
        await self.redis.hset(keys.job(prompt_id), "queue", queue)
        log.info("job %s (%s) queued on %s", prompt_id, kind, queue)
        return prompt_id, True

    async def result(self, prompt_id: str) -> Optional[dict]:
        raw = await self.redis.get(keys.result(prompt_id))
        return json.loads(raw) if raw else None

    async def cancel(self, prompt_id: str) -> str:
        return await self.redis.eval(CANCEL_SCRIPT, 2, keys.job(prompt_id), keys.ACTIVE, prompt_id)

    async def wait(self, prompt_id: str, gone, timeout: float) -> Optional[dict]:
        """The result, or None when `gone()` says the client left or the time is up."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                found = await self.result(prompt_id)
                if found is not None:
                    return found
            except aioredis.ConnectionError as exc:  # Redis restarting: the job is safe there
                log.warning("waiting for %s: Redis unreachable (%s)", prompt_id, exc)
            if gone():
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        return None
