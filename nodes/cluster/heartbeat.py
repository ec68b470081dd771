"""The worker's heartbeat: "I am alive, this is my ComfyUI, these models are loaded".

A key `ds:alive:<name>` that expires after `dead_after` seconds unless
refreshed. The gateway routes a job to a worker's own queue only while the
key exists and says the model is loaded and the worker idle; its watchdog
requeues the jobs of a worker whose key has expired. The key is refreshed
only while the local ComfyUI answers: a worker beside a dead ComfyUI stops
being alive at once. During a job the ComfyUI is not asked (a busy CPU may
answer slowly; the job's websocket proves it alive), and between jobs it takes
three missed answers in a row to call it dead.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import redis

from . import keys
from .comfy_link import ComfyGone, LocalComfy
from .config import Settings, WorkerSettings

log = logging.getLogger(__name__)
MISSES_BEFORE_DEAD = 3


class Heartbeat:
    def __init__(self, r: redis.Redis, comfy: LocalComfy, worker: WorkerSettings, settings: Settings):
        self.redis, self.comfy, self.worker, self.settings = r, comfy, worker, settings
        self.busy = False
        self.job = ""
        self.models: list[str] = []
        self._misses = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ds-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and say so at once (the worker is leaving)."""
        self._stop.set()
        self._wake.set()
        try:
            self.redis.delete(keys.alive(self.worker.name))
        except redis.RedisError:
            pass

    def beat_now(self) -> None:
        self._wake.set()

    def set_busy(self, job: str) -> None:
        """Mark the worker busy with `job`, or idle (""). Going idle beats at once, in the
        caller's thread, before the job's result is stored: a client that reads the result
        and sends the next job for the same model finds this worker idle, with that model."""
        self.busy, self.job = bool(job), job
        if job:
            self.beat_now()
            return
        try:
            self.beat()
        except redis.RedisError as exc:
            log.warning("heartbeat not written (Redis): %s", exc)

    def _probe(self) -> bool:
        if self.busy:
            return True
        try:
            self.models = self.comfy.loaded_models()
            self._misses = 0
            return True
        except (ComfyGone, ValueError) as exc:
            self._misses += 1
            log.warning("ComfyUI at %s missed a heartbeat (%d/%d): %s", self.comfy.url, self._misses,
                        MISSES_BEFORE_DEAD, exc)
            return self._misses < MISSES_BEFORE_DEAD

    def beat(self) -> None:
        if self._stop.is_set():  # the worker is leaving: never say alive again
            return
        name = self.worker.name
        if not self._probe():
            self.redis.delete(keys.alive(name))
            return
        record = {"name": name, "url": self.worker.public_url, "models": self.models, "busy": self.busy,
                  "job": self.job, "time": time.time()}
        pipe = self.redis.pipeline()
        pipe.set(keys.alive(name), json.dumps(record), px=int(self.settings.dead_after * 1000))
        pipe.hset(keys.WORKERS, name, self.worker.public_url)
        pipe.execute()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat not written (Redis): %s", exc)
            self._wake.wait(self.settings.heartbeat)
            self._wake.clear()
