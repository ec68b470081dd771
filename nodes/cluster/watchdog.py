"""The gateway's watchdog thread: a rescue sweep (rescue.py) every second or so.

It runs in a thread with its own (blocking) Redis client and Celery
producer, beside the gateway's event loop; a Redis outage only makes it wait.
"""
from __future__ import annotations

import logging
import threading

import redis
from celery import Celery

from .config import Settings
from .rescue import sweep

log = logging.getLogger(__name__)


class Watchdog(threading.Thread):
    def __init__(self, app: Celery, settings: Settings):
        super().__init__(name="ds-watchdog", daemon=True)
        self.app, self.settings = app, settings
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=10)
        self.interval = min(1.0, settings.heartbeat / 2)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                sweep(self.redis, self.app, self.settings)
            except redis.RedisError as exc:
                log.warning("watchdog: Redis unreachable (%s)", exc)
            except Exception:  # keep watching whatever one pass hit
                log.exception("watchdog pass failed")
