"""The tiny SD1.5 inpainting checkpoint the inpaint workflows can name.

`write()` (called by `harness.models.write_concept_models`) puts
`checkpoints/sd-v1-5-inpainting.safetensors` into the models folder: the tiny
SD1 components of `tests/tiny_models.py` with a 9-channel UNet (latents + mask
+ masked image latents), exported in the original LDM single-file layout by
`tests/ldm_export.py`, under the file name of runwayml's release.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent

SD15_INPAINTING = "sd-v1-5-inpainting.safetensors"


def _tests_module(name: str):
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return importlib.import_module(name)


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    tiny_models = _tests_module("tiny_models")
    ldm_export = _tests_module("ldm_export")
    checkpoints = Path(models_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    path = checkpoints / SD15_INPAINTING
    ldm_export.save_sd1_single_file(tiny_models.tiny_sd1_components(seed, in_channels=9), path)
    return [path]
