"""A whole cluster on loopback for the tests: Redis, N ComfyUI workers, the gateway.

Redis runs from a temporary folder with an append-only file on a free port;
each worker is a real ComfyUI (harness.server) with the tiny models (written
once, shared through a symlink) beside its Celery worker
(`python -m nodes.cluster.worker`). Timings are shortened through the
DS_CLUSTER_* variables so a dead worker is noticed in seconds. `stop()` ends
every process group, whatever state the test left them in.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import requests

from . import models, server
from .tests_modules import tests_module

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

# Through the package name tests/conftest.py registers: a bare `nodes` is
# ComfyUI's nodes.py once any test has imported ComfyUI.
from diffusers_studio.nodes.cluster import procs  # noqa: E402

log = logging.getLogger(__name__)

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
FAST = {
    "DS_CLUSTER_HEARTBEAT": "0.5",
    "DS_CLUSTER_DEAD_AFTER": "3",
    "DS_CLUSTER_VISIBILITY_TIMEOUT": "60",
    "DS_CLUSTER_RESTORE_INTERVAL": "1",
    "DS_CLUSTER_JOB_TIMEOUT": "600",
}


TEST_WORKFLOW = "cluster_txt2img"


def install_test_workflow(base: Path) -> None:
    """The shipped txt2img workflow, shrunk (64x64, 2 steps) and with its sampler titled
    "Sampler", saved as a user workflow: POST /ds/workflows/cluster_txt2img/run can set the seed."""
    workflow = json.loads((REPO_ROOT / "example_workflows" / "txt2img_sd15.json").read_text(encoding="utf-8"))
    for node in workflow["nodes"]:
        if node["type"] == "DSSampler":
            node["title"] = "Sampler"
            node["widgets_values"][2] = 2  # steps
        elif node["type"] == "EmptyLatentImage":
            node["widgets_values"][:2] = [64, 64]
    folder = base / "user" / "default" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TEST_WORKFLOW}.json").write_text(json.dumps(workflow), encoding="utf-8")


def write_sd15_models(models_dir: Path) -> None:
    """Only the tiny SD1.5 models (a single file and a diffusers folder): two model names
    for the routing checks, written in a fraction of the time of the whole set."""
    tiny_models = tests_module("tiny_models")
    ldm_export = tests_module("ldm_export")
    (models_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (models_dir / "diffusers").mkdir(parents=True, exist_ok=True)
    ldm_export.save_sd1_single_file(tiny_models.tiny_sd1_components(0), models_dir / "checkpoints" / models.SD15_CHECKPOINT)
    ldm_export.save_diffusers_folder(tiny_models.sd1_pipeline(0), models_dir / "diffusers" / models.SD15_DIFFUSERS)


@dataclass
class Worker:
    name: str
    comfy: server.ComfyServer
    celery: Optional[procs.Proc] = None


@dataclass
class Cluster:
    root: Path
    redis_port: int = 0
    redis: Optional[procs.Proc] = None
    gateway: Optional[procs.Proc] = None
    gateway_port: int = 0
    workers: list[Worker] = field(default_factory=list)
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def redis_client(self):
        import redis

        return redis.Redis.from_url(self.redis_url, decode_responses=True)

    def start_redis(self) -> None:
        self.redis = procs.start_redis(self.root / "redis", self.redis_port, self.root / "redis.log")

    def start_celery(self, worker: Worker) -> None:
        worker.celery = procs.start_worker(worker.name, worker.comfy.url, self.root / f"{worker.name}.celery.log",
                                           env=self.env)

    def wait_workers_alive(self, names: list[str], timeout: float = 90) -> None:
        def all_alive() -> bool:
            try:
                body = requests.get(self.url + "/ready", timeout=5).json()
            except (requests.RequestException, ValueError):
                return False
            return set(names) <= {w["name"] for w in body.get("workers", [])}

        procs.wait_until(all_alive, timeout, f"workers {names} beating")

    def logs(self) -> str:
        parts = []
        for proc in [self.gateway, self.redis] + [w.celery for w in self.workers]:
            if proc is not None:
                parts.append(f"--- {proc.name} ({proc.log_path}) ---\n{proc.log_tail(80)}")
        return "\n".join(parts)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.celery is not None:
                worker.celery.stop()
        if self.gateway is not None:
            self.gateway.stop()
        for worker in self.workers:
            worker.comfy.stop()
        if self.redis is not None:
            self.redis.stop()


@contextmanager
def torch_threads(count: int):
    """Servers started inside use `count` torch threads each, so that workers share the
    machine's cores instead of fighting over them (the variables are read when torch starts)."""
    saved = {name: os.environ.get(name) for name in THREAD_VARS}
    os.environ.update({name: str(count) for name in THREAD_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_cluster(root: Path, n_workers: int = 2, env: Optional[dict] = None,
                  threads_per_worker: Optional[int] = None) -> Cluster:
    """Start everything; on any failure stop what was started and raise.

    Each ComfyUI gets the machine's cores divided among the workers (at least one)."""
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n_workers)
    root = Path(root)
    cluster = Cluster(root=root, redis_port=procs.free_port(), gateway_port=procs.free_port())
    try:
        cluster.start_redis()
        cluster.env = {**FAST, "DS_CLUSTER_REDIS_URL": cluster.redis_url, "PYTHONUNBUFFERED": "1", **(env or {})}
        shared_models = root / "models"
        write_sd15_models(shared_models)
        pending = []
        for index in range(n_workers):
            base = root / f"w{index}"
            base.mkdir(parents=True)
            (base / "models").symlink_to(shared_models, target_is_directory=True)
            server.prepare_base_dir(base)
            install_test_workflow(base)
            pending.append((f"w{index}", base))
        # Start the ComfyUI servers together (they import torch in parallel); keep every
        # one that came up, so that stop() ends it even when another failed.
        with ThreadPoolExecutor(len(pending)) as pool, torch_threads(threads):
            futures = [pool.submit(server.start_server, base, root / f"{name}.comfyui.log") for name, base in pending]
        failure = None
        for (name, _), future in zip(pending, futures):
            if future.exception() is None:
                cluster.workers.append(Worker(name, future.result()))
            else:
                failure = future.exception()
        if failure is not None:
            raise failure
        cluster.gateway = procs.start_gateway(cluster.gateway_port, root / "gateway.log", env=cluster.env)
        for worker in cluster.workers:
            cluster.start_celery(worker)
        cluster.wait_workers_alive([w.name for w in cluster.workers])
        return cluster
    except BaseException:
        log.error("cluster start failed:\n%s", cluster.logs())
        cluster.stop()
        raise
