"""The tiny FLUX.1 dev and SD3.5 medium all-in-one checkpoints the DiT workflows name.

`write()` (called by `harness.models.write_concept_models`) puts
`checkpoints/flux1-dev-fp8.safetensors` and `checkpoints/sd3.5_medium.safetensors`
into the models folder: the single-file-ready tiny models of
`tests/dit_tiny.py` with 16 latent channels (the real families' latent
space, so the workflows' EmptySD3LatentImage fits), in ComfyUI's all-in-one
layout written by `tests/dit_export.py`. The FLUX.1 file is really fp8, as
its name says, so the demo runs the path real files take (its float8
weights kept as float8, engine/float8_storage.py).
"""
from __future__ import annotations

from pathlib import Path

from .tests_modules import tests_module

FLUX_CHECKPOINT = "flux1-dev-fp8.safetensors"
SD35_CHECKPOINT = "sd3.5_medium.safetensors"
LATENT = 16


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    dit_tiny, dit_export = tests_module("dit_tiny"), tests_module("dit_export")
    checkpoints = Path(models_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    flux = dit_tiny.tiny_flux_components("dev", seed, latent=LATENT)
    sd35 = dit_tiny.tiny_sd3_components("sd35_medium", seed, latent=LATENT)
    return [
        dit_export.save_all_in_one(flux, checkpoints / FLUX_CHECKPOINT, fp8="fp8"),
        dit_export.save_all_in_one(sd35, checkpoints / SD35_CHECKPOINT),
    ]
