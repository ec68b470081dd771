"""`make cluster`: a whole scale-out cluster on this machine, for trying it.

Starts, on loopback: redis-server (append-only, in the cluster folder), N
ComfyUI servers with the pack (the demo models of `make run` unless the first
worker's models folder holds real ones; the others share it), a Celery worker
beside each (`python -m nodes.cluster.worker`) and the gateway
(`python -m nodes.cluster.gateway`). Then it watches them: a process that
dies is started again (a killed ComfyUI takes its Celery worker down with it
on purpose; both come back), which is what a process supervisor or Docker's
restart policy does in a deployment. Ctrl-C stops everything.

Settings (environment): DS_CLUSTER_WORKERS (2), DS_CLUSTER_PORT (gateway,
8190; ComfyUI servers on the next ports), DS_CLUSTER_REDIS_PORT (6390),
DS_CLUSTER_DIR (~/.cache/diffusers-studio/cluster). With CUDA GPUs, worker i
gets GPU i (CUDA_VISIBLE_DEVICES); without, ComfyUI runs with --cpu.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from nodes.cluster import procs  # noqa: E402
from run_comfyui import environment_comfyui, prepare_private_base  # noqa: E402

log = logging.getLogger("run_cluster")


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class Supervisor:
    def __init__(self, root: Path, workers: int, port: int, redis_port: int):
        self.root, self.n, self.port, self.redis_port = root, workers, port, redis_port
        self.comfyui = Path(os.environ.get("COMFYUI_PATH") or environment_comfyui()).resolve()
        self.env = {"DS_CLUSTER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1"}
        self.gpus = gpu_count()
        self.redis = self.gateway = None
        self.comfy: dict[int, procs.Proc] = {}
        self.workers: dict[int, procs.Proc] = {}

    def comfy_port(self, i: int) -> int:
        return self.port + 1 + i

    def base(self, i: int) -> Path:
        base = self.root / f"worker{i}"
        if i > 0 and not (base / "models").exists():
            base.mkdir(parents=True, exist_ok=True)
            (base / "models").symlink_to(self.root / "worker0" / "models", target_is_directory=True)
        prepare_private_base(base, self.comfyui)
        return base

    def start_comfy(self, i: int) -> procs.Proc:
        base = self.base(i)
        command = [sys.executable, str(self.comfyui / "main.py"), "--listen", "127.0.0.1",
                   "--port", str(self.comfy_port(i)), "--base-directory", str(base),
                   "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}", "--disable-auto-launch",
                   "--preview-method", "auto"]
        env = dict(self.env)
        if self.gpus > i:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        else:
            command.append("--cpu")
        proc = procs.spawn(f"comfyui {i}", command, self.root / "logs" / f"comfyui{i}.log", env, cwd=self.comfyui)
        self.comfy[i] = proc
        return proc

    def wait_comfy(self, i: int) -> None:
        url = f"http://127.0.0.1:{self.comfy_port(i)}/system_stats"
        procs.wait_until(lambda: procs.http_ok(url), 300, f"ComfyUI {i}", self.comfy[i])

    def start_worker(self, i: int) -> None:
        self.workers[i] = procs.start_worker(f"worker{i}", f"http://127.0.0.1:{self.comfy_port(i)}",
                                             self.root / "logs" / f"worker{i}.log", self.env)

    def start(self) -> None:
        self.redis = procs.start_redis(self.root / "redis", self.redis_port, self.root / "logs" / "redis.log")
        for i in range(self.n):
            self.start_comfy(i)
        for i in range(self.n):
            self.wait_comfy(i)
            self.start_worker(i)
        self.gateway = procs.start_gateway(self.port, self.root / "logs" / "gateway.log", self.env)
        log.info("cluster ready: http://127.0.0.1:%d (GET /ready), %d workers, logs in %s",
                 self.port, self.n, self.root / "logs")

    def watch(self) -> None:
        while True:
            time.sleep(1.0)
            if not self.redis.alive():
                log.warning("redis-server died; starting it again (its append-only file keeps the queue)")
                self.redis = procs.start_redis(self.root / "redis", self.redis_port, self.root / "logs" / "redis.log")
            if not self.gateway.alive():
                log.warning("the gateway died; starting it again")
                self.gateway = procs.start_gateway(self.port, self.root / "logs" / "gateway.log", self.env)
            for i in range(self.n):
                if not self.comfy[i].alive():
                    log.warning("ComfyUI %d died; starting it and its worker again", i)
                    self.workers[i].stop()
                    self.start_comfy(i)
                    self.wait_comfy(i)
                    self.start_worker(i)
                elif not self.workers[i].alive():
                    log.warning("worker %d died; starting it again", i)
                    self.start_worker(i)

    def stop(self) -> None:
        for proc in [*self.workers.values(), self.gateway, *self.comfy.values(), self.redis]:
            if proc is not None:
                proc.stop()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(os.environ.get("DS_CLUSTER_DIR") or "~/.cache/diffusers-studio/cluster").expanduser().resolve()
    supervisor = Supervisor(root, int(os.environ.get("DS_CLUSTER_WORKERS", "2")),
                            int(os.environ.get("DS_CLUSTER_PORT", "8190")),
                            int(os.environ.get("DS_CLUSTER_REDIS_PORT", "6390")))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C stops the cluster even when this was started in the background, where
    # the shell starts children with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        supervisor.start()
        supervisor.watch()
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping the cluster")
        supervisor.stop()


if __name__ == "__main__":
    main()
