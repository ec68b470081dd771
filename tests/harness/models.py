"""The tiny demo models, written under the real model file names, in the pack's demo folder.

Shipped workflows name real checkpoints (`v1-5-pruned-emaonly.safetensors`,
`sd_xl_base_1.0.safetensors`). Writing random-weight tiny models under those
names lets the tests, and a user trying the pack without weights, run every
shipped workflow unchanged, in seconds on a CPU. The images are noise: the
weights are random. They go to `models/diffusers_studio_demo/`, which only
the pack's loaders list: ComfyUI's native Load Checkpoint builds the text
encoder and VAE at full size whatever the file holds, so it cannot read them
(a natively loadable SD1.5 demo measured 465 MB against 13 MB, and minutes
for a 512x512 picture on a CPU), and it never offers them.

The components come from `tests/tiny_models.py`; the single-file LDM layout
comes from `tests/ldm_export.py`. Both live in the tests folder, which this
module puts on `sys.path` so that scripts outside pytest can use it too.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path
from typing import Optional

from .tests_modules import tests_module

log = logging.getLogger(__name__)


# The pack's demo folder (nodes/comfy_bridge.DEMO_FOLDER): the tiny models go
# to models/diffusers_studio_demo/<kind>/, which only the pack's loaders list,
# so ComfyUI's native loaders never offer files they cannot read.
DEMO_FOLDER = "diffusers_studio_demo"

SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SD15_DIFFUSERS = "tiny-sd15"

# The model names a workflow may use, by the folder they live in.
CHECKPOINTS = (SD15_CHECKPOINT, SDXL_CHECKPOINT)
DIFFUSERS_FOLDERS = (SD15_DIFFUSERS,)


def ldm_export_available() -> bool:
    """Whether `tests/ldm_export.py` (single-file LDM writer) exists yet."""
    try:
        tests_module("ldm_export")
    except ModuleNotFoundError as exc:
        if exc.name != "ldm_export":
            raise
        return False
    return True


def demo_dir(models_dir: Path) -> Path:
    """Where the demo models of ComfyUI models folder `models_dir` go."""
    return Path(models_dir) / DEMO_FOLDER


# What decides the demo files: the writers here and the tests' model builders.
# Their hash is stamped into the demo folder, so `make run` can tell a folder
# written before a workflow's models were added (or changed) and write it again.
STAMP = ".written-by"
_SOURCES = ("tiny_models.py", "ldm_export.py", "dit_tiny.py", "dit_export.py", "tiny_dit.py")


def demo_stamp(here: Optional[Path] = None) -> str:
    """A hash of the code that writes the demo models (harness/models*.py and the builders they use);
    `here`: the harness folder (this one by default)."""
    here = Path(here) if here is not None else Path(__file__).resolve().parent
    files = sorted(here.glob("models*.py")) + [here.parent / name for name in _SOURCES]
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def demo_outdated(models_dir: Path) -> bool:
    """Whether `models_dir` holds a demo folder written by other (older) demo-model code."""
    folder = demo_dir(models_dir)
    if not folder.is_dir():
        return False
    stamp = folder / STAMP
    return not stamp.is_file() or stamp.read_text(encoding="utf-8").strip() != demo_stamp()


def write_tiny_models(models_dir: Path, seed: int = 0) -> list[Path]:
    """Write the tiny SD1 and SDXL models into ComfyUI models folder `models_dir`; returns what it wrote.

    Layout, under `models_dir/diffusers_studio_demo/` (see DEMO_FOLDER):
    `checkpoints/v1-5-pruned-emaonly.safetensors` (SD1 single file),
    `checkpoints/sd_xl_base_1.0.safetensors` (SDXL single file),
    `diffusers/tiny-sd15/` (SD1 diffusers folder) and the concept modules'
    files. Existing files are overwritten. Needs COMFYUI_PATH (the CLIP
    tokenizer comes from ComfyUI).
    """
    tiny_models = tests_module("tiny_models")
    models_dir = demo_dir(models_dir)
    checkpoints = models_dir / "checkpoints"
    diffusers_dir = models_dir / "diffusers"
    checkpoints.mkdir(parents=True, exist_ok=True)
    diffusers_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    sd1 = tiny_models.sd1_pipeline(seed)
    folder = diffusers_dir / SD15_DIFFUSERS
    if ldm_export_available():
        ldm_export = tests_module("ldm_export")
        ldm_export.save_diffusers_folder(sd1, folder)
        written.append(folder)
        ldm_export.save_sd1_single_file(tiny_models.tiny_sd1_components(seed), checkpoints / SD15_CHECKPOINT)
        written.append(checkpoints / SD15_CHECKPOINT)
        ldm_export.save_sdxl_single_file(tiny_models.tiny_sdxl_components(seed), checkpoints / SDXL_CHECKPOINT)
        written.append(checkpoints / SDXL_CHECKPOINT)
    else:
        # Until the single-file writer lands only the diffusers folder exists;
        # workflows that name a checkpoint then fail with "unknown model".
        log.warning("tests/ldm_export.py not found: writing only the diffusers folder %s", folder)
        sd1.save_pretrained(str(folder), safe_serialization=True)
        written.append(folder)
    written += write_concept_models(models_dir, seed)
    for path in written:
        log.info("wrote tiny model %s", path)
    (models_dir / STAMP).write_text(demo_stamp() + "\n", encoding="utf-8")
    return written


def write_concept_models(models_dir: Path, seed: int = 0) -> list[Path]:
    """Tiny adapter files (ControlNets, IP-Adapters, LoRAs, ...) for the workflows.

    Each concept adds a module `tests/harness/models_<concept>.py` with a
    function `write(models_dir: Path, seed: int) -> list[Path]`; every such
    module is called here, so adding a concept never edits this file.
    """
    written: list[Path] = []
    for path in sorted(Path(__file__).resolve().parent.glob("models_*.py")):
        module = importlib.import_module(f"{__package__}.{path.stem}")
        written += list(module.write(Path(models_dir), seed))
    return written


def has_any_model(models_dir: Path) -> bool:
    """Whether ComfyUI models folder `models_dir` already holds a checkpoint or a diffusers folder (demo ones too)."""
    for root in (Path(models_dir), demo_dir(models_dir)):
        checkpoints = root / "checkpoints"
        if checkpoints.is_dir() and any(
            p.suffix.lower() in (".safetensors", ".sft", ".ckpt") for p in checkpoints.rglob("*") if p.is_file()
        ):
            return True
        diffusers_dir = root / "diffusers"
        if diffusers_dir.is_dir() and any(diffusers_dir.rglob("model_index.json")):
            return True
    return False
