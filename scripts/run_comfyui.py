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
GPU. Extra arguments are passed to ComfyUI's main.py.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "diffusers_studio"
DEFAULT_BASE = Path("~/.cache/diffusers-studio/comfyui-base")

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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    own_env = environment_comfyui()
    comfyui = Path(os.environ.get("COMFYUI_PATH") or own_env).expanduser().resolve()
    if not (comfyui / "main.py").is_file():
        raise SystemExit(f"COMFYUI_PATH={comfyui} has no main.py; run `make env` or point it at a ComfyUI checkout")
    os.environ["COMFYUI_PATH"] = str(comfyui)
    port = os.environ.get("DS_PORT", "8188")
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
    os.chdir(comfyui)
    os.execv(python, [python, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
