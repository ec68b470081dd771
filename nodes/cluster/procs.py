"""Starting and stopping the cluster's processes: redis-server, workers, gateway.

Used by `make cluster` (scripts/run_cluster.py) and by the tests, so both run
the same commands. Every process gets its own process group and a log file,
and `Proc.stop()` ends the whole group (SIGTERM, then SIGKILL), so nothing is
left behind even when a caller fails half-way.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the main process only (a fault test kills one process, not its group)."""
        if self.alive():
            os.kill(self.process.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(name: str, command: Sequence[str], log_path: Path, env: Optional[dict] = None,
          cwd: Optional[Path] = None) -> Proc:
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(list(command), cwd=str(cwd or REPO_ROOT), env={**os.environ, **(env or {})},
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Proc(name, process, log_path)


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if not found:
        raise FileNotFoundError("redis-server not found: install Debian's package (`sudo apt-get install redis-server`, "
                                "or `make test` / scripts/ensure_redis.sh) or put redis-server on PATH")
    return found


def start_redis(data_dir: Path, port: int, log_path: Path) -> Proc:
    """redis-server on loopback with an append-only file synced at every write.

    `appendfsync always`: a job the gateway has answered with a prompt id is
    on disk, so a broker restart (or crash) loses nothing acknowledged.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
               "--protected-mode", "yes"]
    proc = spawn("redis", command, log_path)
    wait_until(lambda: _redis_answers(port), 20, f"redis-server on port {port}", proc)
    return proc


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(check, timeout: float, what: str, proc: Optional[Proc] = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{what} exited with {proc.process.returncode}:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s" + (f":\n{proc.log_tail()}" if proc else ""))
        time.sleep(0.2)


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code < 500
    except requests.RequestException:
        return False


def start_worker(name: str, comfy_url: str, log_path: Path, env: Optional[dict] = None,
                 python: Optional[str] = None) -> Proc:
    command = [python or sys.executable, "-m", "nodes.cluster.worker", "--name", name, "--comfy-url", comfy_url]
    return spawn(f"worker {name}", command, log_path, env)


def start_gateway(port: int, log_path: Path, env: Optional[dict] = None, python: Optional[str] = None,
                  timeout: float = 60) -> Proc:
    command = [python or sys.executable, "-m", "nodes.cluster.gateway", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn("gateway", command, log_path, env)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/prompt"), timeout, "the gateway", proc)
    return proc
