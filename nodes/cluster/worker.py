"""`python -m nodes.cluster.worker`: the Celery worker beside one ComfyUI server.

Run one per ComfyUI (one per GPU), from the pack's folder:

    DS_CLUSTER_REDIS_URL=redis://queue-host:6379/0 \\
    python -m nodes.cluster.worker --name gpu0 --comfy-url http://127.0.0.1:8188

It waits for its ComfyUI, clears what a previous life of this worker left
there (queued or running prompts nobody waits for any more) and hands back
the jobs Redis still has marked as running on it, starts its heartbeat, then
consumes the shared queue and its own (`ds.w.<name>`) with Celery's solo pool:
one job at a time, prefetch 1, acknowledged when done.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import redis

from . import keys
from .celery_app import make_app
from .comfy_link import LocalComfy
from .config import Settings, WorkerSettings
from .heartbeat import Heartbeat
from .rescue import release_own
from .tasks import WorkerContext, register

log = logging.getLogger("ds.cluster.worker")


def wait_for_comfy(comfy: LocalComfy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not comfy.healthy(timeout=2.0):
        if time.monotonic() > deadline:
            raise SystemExit(f"ComfyUI at {comfy.url} did not answer /system_stats within {timeout:.0f} s; "
                             "start it first or pass --comfy-url")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Celery worker beside one ComfyUI server (Diffusers Studio cluster)")
    parser.add_argument("--name", help="worker name, letters/digits/_/- (default: DS_CLUSTER_WORKER_NAME or host-pid)")
    parser.add_argument("--comfy-url", help="this worker's ComfyUI (default: DS_CLUSTER_COMFY_URL or 127.0.0.1:8188)")
    parser.add_argument("--public-url", help="the same ComfyUI as the gateway reaches it, for /view (default: --comfy-url)")
    parser.add_argument("--wait", type=float, default=300.0, help="seconds to wait for ComfyUI to answer")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        worker = WorkerSettings.from_env(args.name, args.comfy_url, args.public_url)
        settings = Settings()
    except ValueError as exc:
        raise SystemExit(str(exc)) from None

    comfy = LocalComfy(worker.comfy_url)
    wait_for_comfy(comfy, args.wait)
    comfy.clear()
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=10)
    app = make_app(settings)
    released = release_own(r, app, worker.name)
    if released:
        log.warning("%d job(s) marked as running on %s before this start went back on the queue", released, worker.name)
    heartbeat = Heartbeat(r, comfy, worker, settings)
    register(app, WorkerContext(settings, worker, r, comfy, heartbeat, app))
    heartbeat.beat()
    heartbeat.start()
    log.info("worker %s for ComfyUI %s on %s", worker.name, worker.comfy_url, settings.redis_url)
    try:
        app.worker_main([
            "worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
            "-Q", f"{keys.worker_queue(worker.name)},{keys.SHARED_QUEUE}",
            "-n", f"{worker.name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
            f"--loglevel={args.loglevel.upper()}",
        ])
    finally:
        heartbeat.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
