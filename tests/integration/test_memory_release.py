"""ComfyUI's "Free model and node cache" (POST /free) really releases the pack's models.

The pack's loader cache holds only weak references and its modules are
registered with ComfyUI's model management, so once ComfyUI drops its node
outputs nothing keeps the weights alive. `GET /diffusers_studio/models`
reports the checkpoints still in memory; these tests watch it.
"""
from __future__ import annotations

import time

import pytest

from harness import prompts
from harness.models import SD15_CHECKPOINT, SDXL_CHECKPOINT

pytestmark = pytest.mark.integration


def _loaded(comfy) -> list[dict]:
    response = comfy.get("/diffusers_studio/models")
    assert response.status_code == 200, response.text
    return response.json()["models"]


def _wait_for(comfy, predicate, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    models = _loaded(comfy)
    while not predicate(models) and time.monotonic() < deadline:
        time.sleep(0.25)
        models = _loaded(comfy)
    return models


def test_free_releases_loaded_models_and_the_next_prompt_reloads(idle_comfy):
    result = idle_comfy.run(prompts.txt2img(SD15_CHECKPOINT, steps=2, seed=2100, prefix="test/release"))
    assert result.status == "success", result.summary()
    names = [m["name"] for m in _loaded(idle_comfy)]
    assert SD15_CHECKPOINT in names

    assert idle_comfy.free(unload_models=True, free_memory=True).status_code == 200
    models = _wait_for(idle_comfy, lambda ms: not ms)
    assert models == [], f"still in memory after POST /free: {models}"

    again = idle_comfy.run(prompts.txt2img(SD15_CHECKPOINT, steps=2, seed=2101, prefix="test/release"))
    assert again.status == "success", again.summary()
    assert SD15_CHECKPOINT in [m["name"] for m in _loaded(idle_comfy)]


def test_switching_checkpoints_keeps_one_copy_each(idle_comfy):
    """Run A, B, A, B: the pack never holds two copies of the same checkpoint."""
    for i, model in enumerate([SD15_CHECKPOINT, SDXL_CHECKPOINT, SD15_CHECKPOINT, SDXL_CHECKPOINT]):
        result = idle_comfy.run(prompts.txt2img(model, steps=1, seed=2200 + i, prefix="test/switch"))
        assert result.status == "success", result.summary()
        paths = [m["path"] for m in _loaded(idle_comfy)]
        assert len(paths) == len(set(paths)), f"duplicate copies in memory: {paths}"
        assert len(paths) <= 2
