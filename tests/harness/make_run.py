"""Start ComfyUI the way `make run` does (scripts/run_comfyui.py), for the tests of what a newcomer meets.

Unlike `server.start_server`, which starts ComfyUI's main.py directly with
only the pack whitelisted, this runs `make run`'s own script in a temporary
base directory (`DS_BASE_DIR`) on a free port (`DS_PORT`): it writes the demo
models, names the first workflow and filters ComfyUI's output, so the log
the tests read is the one `make run` shows.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import server

RUN_SCRIPT = server.REPO_ROOT / "scripts" / "run_comfyui.py"


def start(base_dir: Path, log_path: Path, timeout: float = 240.0) -> server.ComfyServer:
    """`make run` in `base_dir` (demo models written on the way); returns once /system_stats answers."""
    base_dir = Path(base_dir).resolve()
    base_dir.mkdir(parents=True, exist_ok=True)
    root = server.comfyui_path()
    port = server.free_port()
    env = server.server_env(base_dir)
    env.update(DS_BASE_DIR=str(base_dir), DS_PORT=str(port), COMFYUI_PATH=str(root))
    env.pop("DS_FIRST_WORKFLOW", None)  # make run's own default
    log_file = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, str(RUN_SCRIPT), "--disable-auto-launch"],
        cwd=str(server.REPO_ROOT),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop() ends ComfyUI with it
    )
    running = server.ComfyServer(root, base_dir, port, Path(log_path), process, log_file)
    try:
        running.wait_ready(timeout)
    except server.ServerError:
        running.stop()
        raise
    return running
