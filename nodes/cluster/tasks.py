"""The one Celery task: run job <prompt_id> on this worker's ComfyUI.

The message holds only the prompt id; the job itself is read from Redis. The
task first claims the job (keys.CLAIM_SCRIPT), so that a second copy of the
message (a broker redelivery, a watchdog rescue) never runs a job that is
finished or running on a live worker. The result is written once (SET NX);
the ComfyUI end-of-prompt message goes out after it, so a client that reads
/history on that message finds the entry.

Failures are sorted by whose fault they are:

- the job's (a 400 from /prompt, a node that raises, a 4xx/5xx from a route):
  stored as its result at once, never retried;
- the worker's (its ComfyUI stopped answering): the job goes back on the
  shared queue as a fresh message and this one is rejected (it may come from
  the worker's own queue, where it would wait for this very worker); the
  heartbeat stops and the worker shuts down, to be restarted beside a fresh
  ComfyUI by its supervisor;
- the worker killed outright: nothing runs here; the message stays
  unacknowledged (acks_late) and the watchdog or the broker hands it on.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass

import redis
from celery import Celery
from celery.exceptions import Reject

from . import keys
from .celery_app import TASK_NAME
from .comfy_link import ComfyGone, LocalComfy
from .config import Settings, WorkerSettings
from .events import Relay
from .heartbeat import Heartbeat
from .rescue import requeue
from .runner import JobRunner

log = logging.getLogger(__name__)
STORE_RETRY_S = 60.0


@dataclass
class WorkerContext:
    settings: Settings
    worker: WorkerSettings
    redis: redis.Redis
    comfy: LocalComfy
    heartbeat: Heartbeat
    app: Celery


def _with_redis_retry(what: str, call, timeout: float = STORE_RETRY_S):
    """Redis may be restarting (the broker's restart test): keep trying for a while."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        try:
            return call()
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable while %s (%s); retrying", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def store_result(ctx: WorkerContext, prompt_id: str, result: dict) -> tuple[dict, bool]:
    """Write the result once; return the one that counts and whether it is ours."""
    r, ttl = ctx.redis, int(ctx.settings.result_ttl)
    result = {**result, "worker": ctx.worker.name, "finished": time.time()}

    def write() -> tuple[dict, bool]:
        if r.set(keys.result(prompt_id), json.dumps(result), nx=True, ex=ttl):
            pipe = r.pipeline()
            pipe.hset(keys.job(prompt_id), mapping={"state": result["state"], "worker": ctx.worker.name})
            pipe.srem(keys.ACTIVE, prompt_id)
            pipe.execute()
            return result, True
        log.info("job %s already has a result (another copy finished first): keeping that one", prompt_id)
        return json.loads(r.get(keys.result(prompt_id))), False

    return _with_redis_retry(f"storing the result of {prompt_id}", write)


def run_job(ctx: WorkerContext, prompt_id: str) -> dict:
    r = ctx.redis
    verdict = _with_redis_retry("claiming a job", lambda: r.eval(
        keys.CLAIM_SCRIPT, 2, keys.job(prompt_id), keys.result(prompt_id),
        ctx.worker.name, time.time(), keys.alive(""), ctx.settings.max_attempts))
    if verdict != "run":
        log.info("job %s not run here: %s", prompt_id, verdict)
        if verdict == "exhausted":
            store_result(ctx, prompt_id, {"state": "error", "status": 500, "body": {
                "error": "WorkerLost", "detail": f"the job was started {ctx.settings.max_attempts} times and its "
                "worker died each time; it is not retried again (DS_CLUSTER_MAX_ATTEMPTS)"}})
        return {"prompt_id": prompt_id, "skipped": verdict}
    job = r.hgetall(keys.job(prompt_id))
    relay = Relay(r, prompt_id, job.get("client_id"))
    ctx.heartbeat.set_busy(prompt_id)
    try:
        result = JobRunner(r, ctx.comfy, ctx.worker.name, ctx.settings.job_timeout).run(prompt_id, job, relay)
    except ComfyGone as exc:
        log.error("worker %s: %s; handing job %s back and stopping", ctx.worker.name, exc, prompt_id)
        ctx.heartbeat.stop()
        # A fresh message on the shared queue (this one may come from this worker's own queue,
        # where a requeued copy would wait for this worker), then this one is dropped.
        _with_redis_retry("handing a job back", lambda: requeue(
            r, ctx.app, prompt_id, f"the ComfyUI of {ctx.worker.name} stopped answering", "running"))
        os.kill(os.getpid(), signal.SIGTERM)  # warm shutdown once the message is settled
        raise Reject(str(exc), requeue=False)
    except Exception as exc:  # the job's own failure: answer it, do not retry
        log.exception("job %s failed on %s", prompt_id, ctx.worker.name)
        result = {"state": "error", "status": 500, "body": {"error": type(exc).__name__, "detail": str(exc)}}
    finally:
        ctx.heartbeat.set_busy("")
    kept, ours = store_result(ctx, prompt_id, result)
    if ours:
        relay.done()
    return {"prompt_id": prompt_id, "state": kept["state"], "worker": kept["worker"]}


def register(app: Celery, ctx: WorkerContext) -> None:
    """Bind the task to this worker's context (its ComfyUI, Redis, heartbeat)."""

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=False)
    def ds_run_job(prompt_id: str) -> dict:
        return run_job(ctx, prompt_id)
