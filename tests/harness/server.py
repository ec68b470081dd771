"""Start and stop a real ComfyUI server with the pack installed.

The integration tests talk to the same server a user runs: ComfyUI's own
`main.py`, our pack loaded from `custom_nodes/` through a symlink to the
checkout, tiny models in a private models folder. Everything the server
writes (models, inputs, outputs, its user folder and database, hub caches)
goes into one temporary base directory, so a test run leaves no trace and
never touches a user's ComfyUI.

COMFYUI_PATH selects the ComfyUI tree: the environment's copy by default (the
Makefile sets it) or a user's own checkout. COMFYUI_PYTHON may name the
interpreter of that checkout; the default is the one running the tests.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import requests

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PACK_NAME = "diffusers_studio"

# Small pictures the tests load with LoadImage: one of a valid size (the
# img2img workflow's `example.png`) and one whose sides are not multiples of 8.
EXAMPLE_IMAGE = "example.png"
EXAMPLE_IMAGE_SIZE = (64, 64)
ODD_IMAGE = "odd_size.png"
ODD_IMAGE_SIZE = (60, 44)


class ServerError(RuntimeError):
    """The server did not start, or the pack did not load into it."""


def comfyui_path() -> Path:
    """The ComfyUI tree to run: COMFYUI_PATH (set by `make test`)."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        raise ServerError("COMFYUI_PATH is not set: run the tests with `make test` or point it at a ComfyUI checkout")
    path = Path(root).expanduser().resolve()
    if not (path / "main.py").is_file():
        raise ServerError(f"COMFYUI_PATH={root} has no main.py: it must be a ComfyUI checkout")
    return path


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_test_image(path: Path, size: tuple[int, int]) -> None:
    """A deterministic colour gradient (not flat, so img2img has something to keep)."""
    import numpy as np
    from PIL import Image

    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 127 // max(width + height - 2, 1)],
        axis=-1,
    ).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)


def prepare_base_dir(base_dir: Path, repo_root: Path = REPO_ROOT) -> Path:
    """Lay out a ComfyUI base directory: the pack, input pictures, empty folders.

    The pack is a symlink named `diffusers_studio` so that ComfyUI imports the
    checkout under the name a user's install has, whatever the clone is called.
    Models are written separately (`harness.models.write_tiny_models`).
    """
    base_dir = Path(base_dir)
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    link = base_dir / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(Path(repo_root).resolve(), target_is_directory=True)
    write_test_image(base_dir / "input" / EXAMPLE_IMAGE, EXAMPLE_IMAGE_SIZE)
    write_test_image(base_dir / "input" / ODD_IMAGE, ODD_IMAGE_SIZE)
    return base_dir


def pack_import_problems(log_text: str, pack_name: str = PACK_NAME) -> list[str]:
    """Lines of a ComfyUI log that say the pack failed to load.

    ComfyUI keeps running when a custom node fails to import: it logs the
    traceback, "Cannot import ... module for custom nodes", "Error while
    calling comfy_entrypoint" and an "(IMPORT FAILED)" line in its import-times
    table. A test run against such a server would fail later with confusing
    "node does not exist" errors, so the fixture checks the log up front.
    """
    markers = (
        "IMPORT FAILED",
        "Cannot import",
        "Error while calling comfy_entrypoint",
        "did not return a ComfyExtension",
        "did not return a list of nodes",
        "is not callable, skipping",
        "Skip ",
    )
    pack_paths = (f"custom_nodes{os.sep}{pack_name}{os.sep}", str(REPO_ROOT) + os.sep)
    problems = [
        line for line in log_text.splitlines() if (pack_name in line) and any(marker in line for marker in markers)
    ]
    # A traceback whose frames run through the pack's files.
    for traceback_text in _tracebacks(log_text):
        if any(path in traceback_text for path in pack_paths):
            problems.append(traceback_text)
    return problems


def _tracebacks(log_text: str) -> list[str]:
    """The Python tracebacks in a log: the header, the indented frames, the error line."""
    found, current = [], None
    for line in log_text.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            current = [line]
        elif current is not None:
            current.append(line)
            if not line.startswith(" "):
                found.append("\n".join(current))
                current = None
    return found


@dataclass
class ComfyServer:
    """A running ComfyUI process and where it keeps its things."""

    comfyui_path: Path
    base_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen
    _log_file: object = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until /system_stats answers; raise with the log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                raise ServerError(
                    f"ComfyUI exited with code {self.process.returncode} before answering.\n"
                    f"--- server log (tail) ---\n{self.log_tail()}"
                )
            try:
                if requests.get(self.url + "/system_stats", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise ServerError(
            f"ComfyUI did not answer /system_stats within {timeout:.0f} s.\n"
            f"--- server log (tail) ---\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and everything it started (its whole process group)."""
        if self.is_running():
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def server_env(base_dir: Path) -> dict:
    """The server's environment: offline hubs, caches inside the base directory."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        DIFFUSERS_OFFLINE="1",
        HF_HOME=str(base_dir / "cache" / "huggingface"),
        TORCH_HOME=str(base_dir / "cache" / "torch"),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def start_server(
    base_dir: Path,
    log_path: Path,
    *,
    root: Optional[Path] = None,
    python: Optional[str] = None,
    extra_args: Sequence[str] = (),
    timeout: float = 90.0,
    attempts: int = 3,
    cpu: bool = True,
) -> ComfyServer:
    """Start ComfyUI on a free loopback port with `base_dir` as its base directory.

    Only our pack is loaded from custom_nodes (`--disable-all-custom-nodes`
    with a whitelist), so a user's own checkout with other packs installed
    gives the same results. Latent previews are on (`--preview-method auto`)
    so the tests see what the editor sees. A port taken between our probe and
    the server's bind is retried with another port. `cpu=False` lets ComfyUI
    use its GPU (the benchmark on a machine with one); tests keep `--cpu` so
    that they give the same results everywhere.
    """
    root = Path(root) if root else comfyui_path()
    python = python or os.environ.get("COMFYUI_PYTHON") or sys.executable
    base_dir = Path(base_dir).resolve()
    last_error: Optional[ServerError] = None
    for _ in range(attempts):
        port = free_port()
        command = [
            python,
            str(root / "main.py"),
            *(["--cpu"] if cpu else []),
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--base-directory",
            str(base_dir),
            "--database-url",
            f"sqlite:///{base_dir / 'user' / 'comfyui.db'}",
            "--disable-auto-launch",
            "--preview-method",
            "auto",
            "--disable-all-custom-nodes",
            "--whitelist-custom-nodes",
            PACK_NAME,
            *extra_args,
        ]
        log.info("starting ComfyUI: %s", " ".join(command))
        log_file = open(log_path, "ab")
        process = subprocess.Popen(
            command,
            cwd=str(root),
            env=server_env(base_dir),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
        server = ComfyServer(root, base_dir, port, Path(log_path), process, log_file)
        try:
            server.wait_ready(timeout)
            return server
        except ServerError as exc:
            server.stop()
            last_error = exc
            if "address already in use" not in server.log_text().lower():
                raise
            log.warning("port %d was taken; trying another", port)
    raise last_error

