"""Cluster settings, read from DS_CLUSTER_* environment variables.

One place for every knob, so the gateway, the workers and the launcher agree
on names and defaults. Durations are seconds.

The Redis `visibility_timeout` is the broker's own redelivery clock: a message
a worker took but never acknowledged (its process was killed) goes back on the
queue once it is that old. It must exceed the longest job, or a healthy worker's
long job is handed to a second worker as well (the results are deduplicated,
the GPU time is not). Dead workers are found sooner through heartbeats
(`dead_after`): the gateway's watchdog requeues their jobs at once.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _float(name: str, default: float) -> float:
    raw = _env(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number; set it to seconds or a count, e.g. {default}") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be greater than 0, e.g. {default}")
    return value


def default_worker_name() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "worker"
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    redis_url: str = field(default_factory=lambda: _env("DS_CLUSTER_REDIS_URL", "redis://127.0.0.1:6379/0"))
    # Broker redelivery of unacknowledged messages (see the module docstring).
    visibility_timeout: float = field(default_factory=lambda: _float("DS_CLUSTER_VISIBILITY_TIMEOUT", 3600))
    # How often kombu looks for expired unacknowledged messages.
    restore_interval: float = field(default_factory=lambda: _float("DS_CLUSTER_RESTORE_INTERVAL", 10))
    heartbeat: float = field(default_factory=lambda: _float("DS_CLUSTER_HEARTBEAT", 2))
    dead_after: float = field(default_factory=lambda: _float("DS_CLUSTER_DEAD_AFTER", 10))
    # Jobs waiting or running before /ready and the submit routes answer 503.
    max_queue: int = field(default_factory=lambda: int(_float("DS_CLUSTER_MAX_QUEUE", 64)))
    # A job whose worker died this many times fails instead of killing another one.
    max_attempts: int = field(default_factory=lambda: int(_float("DS_CLUSTER_MAX_ATTEMPTS", 3)))
    result_ttl: float = field(default_factory=lambda: _float("DS_CLUSTER_RESULT_TTL", 86400))
    # How long the A1111 and workflow routes wait for their picture.
    job_timeout: float = field(default_factory=lambda: _float("DS_CLUSTER_JOB_TIMEOUT", 3600))
    history_size: int = field(default_factory=lambda: int(_float("DS_CLUSTER_HISTORY_SIZE", 1000)))


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker needs about its own ComfyUI."""

    name: str
    comfy_url: str
    # The address the gateway uses for /view; the local one unless they differ.
    public_url: str

    @classmethod
    def from_env(cls, name: str | None = None, comfy_url: str | None = None, public_url: str | None = None):
        name = name or _env("DS_CLUSTER_WORKER_NAME", "") or default_worker_name()
        if not NAME_RE.match(name):
            raise ValueError(f"worker name {name!r} may only hold letters, digits, '_' and '-' (1-64 of them); "
                             "set DS_CLUSTER_WORKER_NAME or --name to such a name, e.g. gpu0")
        comfy_url = (comfy_url or _env("DS_CLUSTER_COMFY_URL", "http://127.0.0.1:8188")).rstrip("/")
        public_url = (public_url or _env("DS_CLUSTER_COMFY_PUBLIC_URL", "") or comfy_url).rstrip("/")
        for label, url in (("--comfy-url", comfy_url), ("--public-url", public_url)):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{label}={url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8188")
        return cls(name=name, comfy_url=comfy_url, public_url=public_url)
