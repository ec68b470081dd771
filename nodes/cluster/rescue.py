"""Putting back on the shared queue the jobs whose worker is gone.

The broker alone would redeliver a killed worker's job only after the
visibility timeout (sized above the longest job, so often an hour), and a job
sent to a worker's own queue would wait there for that worker to return. The
watchdog (in the gateway) does it as soon as a heartbeat expires instead:

- a job `running` on a worker that is no longer alive,
- a job `queued` on the own queue of a worker that is no longer alive,
- a job recorded but never sent (the gateway died between the two).

It is sent again under the same prompt id; should the first copy still run
somewhere (a worker slower than its heartbeat) or come back from the broker
later, the claim and the write-once result keep a single answer.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Optional

import redis
from celery import Celery

from . import keys
from .celery_app import TASK_NAME
from .config import Settings

log = logging.getLogger(__name__)
UNSENT_GRACE_S = 5.0


def send(app: Celery, prompt_id: str, queue: str) -> None:
    app.send_task(TASK_NAME, args=[prompt_id], task_id=prompt_id, queue=queue,
                  retry=True, retry_policy={"max_retries": 20, "interval_start": 0.2, "interval_step": 0.5,
                                            "interval_max": 3})


def needs_rescue(job: dict, alive: set[str], now: float, settings: Settings) -> Optional[str]:
    """Why this job must be sent again, or None."""
    state = job.get("state")
    if state == "running":
        holder = job.get("worker", "")
        if holder and holder not in alive and now - float(job.get("started") or 0) > settings.heartbeat:
            return f"its worker {holder} stopped beating"
    elif state == "queued":
        queue = job.get("queue", "")
        if queue.startswith("ds.w.") and queue[len("ds.w."):] not in alive:
            return f"it waits on the queue of {queue[len('ds.w.'):]}, which stopped beating"
        if not queue and now - float(job.get("created") or 0) > UNSENT_GRACE_S:
            return "it was recorded but never sent"
    return None


def requeue(r: redis.Redis, app: Celery, prompt_id: str, reason: str, expect_state: str) -> bool:
    """Send the job to the shared queue again, unless it changed meanwhile (a worker claimed it)."""
    key = keys.job(prompt_id)
    with r.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.hget(key, "state") != expect_state:
                return False
            pipe.multi()
            pipe.hset(key, mapping={"state": "queued", "worker": "", "queue": keys.SHARED_QUEUE,
                                    "created": time.time()})
            pipe.hincrby(key, "rescues", 1)
            pipe.execute()
        except redis.WatchError:
            return False
    log.warning("job %s back on the shared queue: %s", prompt_id, reason)
    send(app, prompt_id, keys.SHARED_QUEUE)
    return True


def alive_workers(r: redis.Redis) -> set[str]:
    names = list(r.hkeys(keys.WORKERS))
    if not names:
        return set()
    pipe = r.pipeline()
    for name in names:
        pipe.exists(keys.alive(name))
    return {name for name, here in zip(names, pipe.execute()) if here}


def sweep(r: redis.Redis, app: Celery, settings: Settings, only: Optional[Iterable[str]] = None) -> int:
    """One pass over the unfinished jobs; returns how many were sent again."""
    alive = alive_workers(r)
    now = time.time()
    sent = 0
    for prompt_id in list(only if only is not None else r.smembers(keys.ACTIVE)):
        job = r.hgetall(keys.job(prompt_id))
        if not job or job.get("state") in keys.FINAL_STATES or r.exists(keys.result(prompt_id)):
            r.srem(keys.ACTIVE, prompt_id)
            continue
        reason = needs_rescue(job, alive, now, settings)
        if reason and requeue(r, app, prompt_id, reason, job["state"]):
            sent += 1
    return sent


def release_own(r: redis.Redis, app: Celery, worker: str) -> int:
    """At a worker's start: jobs still marked running on it are orphans of its previous life."""
    sent = 0
    for prompt_id in list(r.smembers(keys.ACTIVE)):
        job = r.hgetall(keys.job(prompt_id))
        if job.get("state") == "running" and job.get("worker") == worker:
            if requeue(r, app, prompt_id, f"{worker} restarted while running it", "running"):
                sent += 1
    return sent
