"""`make run`: start ComfyUI with Diffusers Studio installed, ready to use.

Two ways, chosen by COMFYUI_PATH:

- The environment's own ComfyUI (the default the Makefile sets): it runs
  with a private base directory, `${DS_BASE_DIR:-~/.cache/diffusers-studio/comfyui-base}`,
  holding `custom_nodes/diffusers_studio` (a symlink to this checkout), the
  models, inputs and outputs. With no model there yet, the tiny random-weight
  demo models are written first (scripts/make_demo_models.py) so the shipped
  workflows run at once; they draw noise.
- A user's own ComfyUI (COMFYUI_PATH pointing at a checkout): it runs with
  its own folders and models; the pack is linked into its custom_nodes if no
  entry there is this checkout already. No demo models are written.

ComfyUI listens on 127.0.0.1:${DS_PORT:-8188}, with `--cpu` when torch sees no
GPU. Extra arguments are passed to ComfyUI's main.py. The editor opens on the
pack's txt2img_sd15 workflow while the browser holds no saved workflow
(`DS_FIRST_WORKFLOW`, empty for ComfyUI's own first screen). ComfyUI's output
is shown without the torchaudio import noise, replaced by one line saying why
(scripts/comfyui_output.py).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "diffusers_studio"
DEFAULT_BASE = Path("~/.cache/diffusers-studio/comfyui-base")
FIRST_WORKFLOW_VAR = "DS_FIRST_WORKFLOW"
FIRST_WORKFLOW = "txt2img_sd15"

log = logging.getLogger("run_comfyui")


def environment_comfyui() -> Path:
    """The ComfyUI tree of the development environment (scripts/env_path.sh)."""
    env_dir = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "env_path.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(env_dir) / "comfyui"


def link_pack(custom_nodes: Path) -> None:
    """Make sure `custom_nodes` holds this checkout (as a symlink named diffusers_studio)."""
    custom_nodes.mkdir(parents=True, exist_ok=True)
    repo = REPO_ROOT.resolve()
    for entry in custom_nodes.iterdir():
        if entry.resolve() == repo:
            log.info("the pack is installed as %s", entry)
            return
    link = custom_nodes / PACK_NAME
    if link.is_symlink():  # a link to another (moved or deleted) checkout
        link.unlink()
    elif link.exists():
        raise SystemExit(f"{link} exists and is not this checkout ({repo}); move it away or run from that copy")
    link.symlink_to(repo, target_is_directory=True)
    log.info("linked %s -> %s", link, repo)


def prepare_private_base(base: Path, comfyui: Path) -> None:
    """The private base directory: the pack, demo models if there are none, example.png."""
    for sub in ("custom_nodes", "models/checkpoints", "models/diffusers", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link_pack(base / "custom_nodes")
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from make_demo_models import harness_models, make_demo_models

    if not harness_models().has_any_model(base / "models"):
        log.warning(
            "No model in %s: writing the tiny demo models. They have RANDOM weights and draw noise; "
            "put real checkpoints in %s (or diffusers folders in %s) for real pictures.",
            base / "models",
            base / "models" / "checkpoints",
            base / "models" / "diffusers",
        )
        make_demo_models(base / "models")
    elif harness_models().demo_outdated(base / "models"):
        # Written by an older checkout: newer workflows name demo files it lacks. The demo folder is
        # the pack's own (no user file lives there), so it is written again.
        log.warning("The demo models in %s predate this checkout's workflows: writing them again",
                    harness_models().demo_dir(base / "models"))
        make_demo_models(base / "models", force=True)
    # The img2img workflow loads example.png, which ComfyUI ships in its own input folder.
    example = base / "input" / "example.png"
    if not example.exists() and (comfyui / "input" / "example.png").is_file():
        shutil.copyfile(comfyui / "input" / "example.png", example)


def device_args() -> list[str]:
    import torch

    mps = getattr(torch.backends, "mps", None)
    if torch.cuda.is_available() or (mps is not None and mps.is_available()):
        return []
    log.info("torch sees no GPU: starting ComfyUI with --cpu")
    return ["--cpu"]


def main(argv: list[str]) -> None:
    # On stdout, as ComfyUI's output is shown, so the two keep their order.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    own_env = environment_comfyui()
    comfyui = Path(os.environ.get("COMFYUI_PATH") or own_env).expanduser().resolve()
    if not (comfyui / "main.py").is_file():
        raise SystemExit(f"COMFYUI_PATH={comfyui} has no main.py; run `make env` or point it at a ComfyUI checkout")
    os.environ["COMFYUI_PATH"] = str(comfyui)
    port = os.environ.get("DS_PORT", "8188")
    # The editor's first screen: this shipped workflow instead of ComfyUI's
    # stock default graph, while the browser holds no saved workflow
    # (nodes/first_screen.py, web/js/first_screen.js). Empty turns it off.
    os.environ.setdefault(FIRST_WORKFLOW_VAR, FIRST_WORKFLOW)
    args = [str(comfyui / "main.py"), "--listen", "127.0.0.1", "--port", port, "--preview-method", "auto"]

    if comfyui == own_env.resolve():
        base = Path(os.environ.get("DS_BASE_DIR") or DEFAULT_BASE).expanduser().resolve()
        prepare_private_base(base, comfyui)
        args += ["--base-directory", str(base), "--database-url", f"sqlite:///{base / 'user' / 'comfyui.db'}"]
        log.info("ComfyUI %s with base directory %s", comfyui, base)
    else:
        link_pack(comfyui / "custom_nodes")
        log.info("your ComfyUI %s, with its own models and folders", comfyui)

    args += device_args() + argv
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    log.info("open http://127.0.0.1:%s once ComfyUI says it is ready", port)
    sys.exit(run_filtered([python, *args], cwd=comfyui))


def run_filtered(command: list[str], cwd: Path) -> int:
    """Run ComfyUI, showing its output without the torchaudio noise (scripts/comfyui_output.py).

    ComfyUI's stdout and stderr come through one pipe, line by line, in
    order. Ctrl-C reaches ComfyUI from the terminal (same process group) and
    SIGTERM sent to this script is passed on; the exit status is ComfyUI's.
    """
    import torch
    from comfyui_output import TorchaudioNoise

    noise = TorchaudioNoise(torch.__version__.split("+")[0])
    process = subprocess.Popen(
        command, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, encoding="utf-8", errors="replace", bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: process.terminate())

    def show(lines: list[str]) -> None:
        for line in lines:
            if line == noise.note_text:
                log.info("%s", line)
            else:
                sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        for line in process.stdout:
            show(noise.feed(line.rstrip("\n")))
    except KeyboardInterrupt:
        pass  # ComfyUI got the same Ctrl-C; wait for it below
    finally:
        show(noise.flush())
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    main(sys.argv[1:])
