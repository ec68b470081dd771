"""Node-layer tests: ComfyUI importable as a library, models in a temp folder.

ComfyUI's modules (folder_paths, comfy.model_management, comfy_api) are
imported from COMFYUI_PATH without starting a server; its argument parsing is
off by default when imported this way, so it takes its defaults (the CPU here).
"""
from __future__ import annotations

import os
import sys

import pytest


def _comfy_on_path() -> None:
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        pytest.skip("COMFYUI_PATH is not set: run through `make test`", allow_module_level=True)
    if root not in sys.path:
        sys.path.insert(0, root)
    import torch
    from comfy.cli_args import args

    # As `main.py --cpu` would: without it ComfyUI asks CUDA for a device.
    if not torch.cuda.is_available():
        args.cpu = True


_comfy_on_path()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models folder with the tiny models, registered with folder_paths."""
    import folder_paths
    import ldm_export
    import tiny_models

    root = tmp_path_factory.mktemp("models")
    checkpoints = root / "checkpoints"
    diffusers_dir = root / "diffusers"
    checkpoints.mkdir()
    diffusers_dir.mkdir()
    ldm_export.save_sd1_single_file(tiny_models.tiny_sd1_components(0), checkpoints / "tiny-sd15.safetensors")
    ldm_export.save_sdxl_single_file(tiny_models.tiny_sdxl_components(0), checkpoints / "tiny-sdxl.safetensors")
    ldm_export.save_diffusers_folder(tiny_models.sd1_pipeline(0), diffusers_dir / "tiny-sd15")
    refiner = tiny_models.tiny_sdxl_refiner_components(0)
    ldm_export.save_sdxl_refiner_single_file(refiner, checkpoints / "tiny-sdxl-refiner.safetensors")
    ldm_export.save_diffusers_folder(tiny_models.sdxl_refiner_pipeline(0, refiner), diffusers_dir / "tiny-sdxl-refiner")
    (checkpoints / "not-a-model.safetensors").write_bytes(b"this is not a safetensors file")
    folder_paths.add_model_folder_path("checkpoints", str(checkpoints), is_default=True)
    folder_paths.add_model_folder_path("diffusers", str(diffusers_dir), is_default=True)
    folder_paths.filename_list_cache.clear()
    return root


@pytest.fixture
def pretend_novram(monkeypatch):
    """ComfyUI as started with --novram on a GPU: every model it loads is loaded partially.

    load_models_gpu full-loads anything whose load device is the CPU, so the
    CPU is presented as a device with no VRAM to spare. Models already loaded
    are unloaded first, and again afterwards, so the runs start from nothing.
    """
    import comfy.model_management as mm

    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.NO_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    yield
    mm.unload_all_models()
