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

from pathlib import Path

from .tests_modules import tests_module, write_single_file

SDXL_REFINER = "sd_xl_refiner_1.0.safetensors"


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    components = tests_module("tiny_models").tiny_sdxl_refiner_components(seed)
    return write_single_file(models_dir, SDXL_REFINER, "save_sdxl_refiner_single_file", components)
