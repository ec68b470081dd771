"""The tiny SD1.5 inpainting checkpoint the inpaint workflows can name.

`write()` (called by `harness.models.write_concept_models`) puts
`checkpoints/sd-v1-5-inpainting.safetensors` into the models folder: the tiny
SD1 components of `tests/tiny_models.py` with a 9-channel UNet (latents + mask
+ masked image latents), exported in the original LDM single-file layout by
`tests/ldm_export.py`, under the file name of runwayml's release.
"""
from __future__ import annotations

from pathlib import Path

from .tests_modules import tests_module, write_single_file

SD15_INPAINTING = "sd-v1-5-inpainting.safetensors"


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    components = tests_module("tiny_models").tiny_sd1_components(seed, in_channels=9)
    return write_single_file(models_dir, SD15_INPAINTING, "save_sd1_single_file", components)
