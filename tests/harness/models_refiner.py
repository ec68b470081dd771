"""The tiny SDXL refiner the refiner workflow names.

`write()` (called by `harness.models.write_concept_models`) puts
`checkpoints/sd_xl_refiner_1.0.safetensors` into the models folder: the tiny
refiner of `tests/tiny_models.py` (OpenCLIP bigG alone as embedder 0, a
four-level UNet taking 5 time ids with the aesthetic score) in the original
single-file layout of Stability's release, written by `tests/ldm_export.py`.
Its VAE and bigG are those of the tiny SDXL base of the same seed, so the
base's latents hand off to it as real ones do.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent

SDXL_REFINER = "sd_xl_refiner_1.0.safetensors"


def _tests_module(name: str):
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return importlib.import_module(name)


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    tiny_models = _tests_module("tiny_models")
    ldm_export = _tests_module("ldm_export")
    checkpoints = Path(models_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    path = checkpoints / SDXL_REFINER
    ldm_export.save_sdxl_refiner_single_file(tiny_models.tiny_sdxl_refiner_components(seed), path)
    return [path]
