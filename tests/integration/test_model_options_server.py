"""DSModelOptions' weight storages run inside a real ComfyUI server.

The node and unit tests prove the arithmetic; this proves the optional
backends (torchao, bitsandbytes) import and run inside ComfyUI's own process,
where the model is registered with ComfyUI's model management (its layers
switched to comfy.ops classes) before the stored copy is made, and that the
loaded model is left exact: the plain prompt's pixels are the same after.
"""
from __future__ import annotations

import numpy as np
import pytest

from harness import prompts

pytestmark = pytest.mark.integration

OPTIONS = "20"


def _with_storage(storage: str, prefix: str) -> dict:
    graph = prompts.txt2img(steps=2, seed=4242, prefix=prefix)
    graph[OPTIONS] = {
        "class_type": "DSModelOptions",
        "inputs": {"model": [prompts.LOADER, 0], "weight_storage": storage, "attention": "as loaded",
                   "compile_unet": False},
    }
    graph[prompts.SAMPLER]["inputs"]["model"] = [OPTIONS, 0]
    return graph


def _pixels(comfy, result) -> np.ndarray:
    (image,) = result.images()
    return np.asarray(comfy.view_image(image).convert("RGB"), dtype=np.int16)


def test_every_weight_storage_runs_on_the_server_and_leaves_the_model_exact(comfy):
    plain = comfy.run(prompts.txt2img(steps=2, seed=4242, prefix="test/storage_plain"))
    assert plain.status == "success", plain.summary()
    before = _pixels(comfy, plain)
    for storage in ("float8_e4m3fn", "int8 (torchao)", "nf4 (bitsandbytes)"):
        result = comfy.run(_with_storage(storage, "test/storage"))
        assert result.status == "success", f"{storage}: {result.summary()}"
        stored = _pixels(comfy, result)
        assert stored.shape == before.shape
        assert np.abs(stored - before).max() > 0, f"{storage} gave the plain model's pixels: nothing was stored"
    again = comfy.run(prompts.txt2img(steps=2, seed=4242, prefix="test/storage_plain"))
    assert again.status == "success", again.summary()
    assert np.array_equal(_pixels(comfy, again), before)


def _flux(prefix: str, storage: str = "") -> dict:
    """The tiny FLUX.1 dev all-in-one checkpoint (really fp8 on disk), its transformer and T5 stored as `storage`."""
    from harness.models_dit import FLUX_CHECKPOINT

    graph = prompts.txt2img(FLUX_CHECKPOINT, steps=2, seed=4242, prefix=prefix, sampler_name="Euler", cfg=1.0)
    graph[prompts.LATENT] = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    if storage:
        graph[OPTIONS] = {
            "class_type": "DSModelOptions",
            "inputs": {"model": [prompts.LOADER, 0], "weight_storage": storage, "attention": "classic (no sdpa)",
                       "compile_unet": False},
        }
        graph["21"] = {
            "class_type": "DSTextEncoderOptions",
            "inputs": {"text_encoder": [prompts.LOADER, 1], "weight_storage": storage, "apply_to": "T5 only"},
        }
        graph[prompts.SAMPLER]["inputs"]["model"] = [OPTIONS, 0]
        for node in (prompts.POSITIVE, prompts.NEGATIVE):
            graph[node]["inputs"]["text_encoder"] = ["21", 0]
    return graph


def test_flux_transformer_and_t5_storage_run_on_the_server_and_leave_the_model_exact(comfy):
    plain = comfy.run(_flux("test/flux_storage_plain"))
    assert plain.status == "success", plain.summary()
    before = _pixels(comfy, plain)
    for storage in ("float8_e4m3fn", "nf4 (bitsandbytes)"):
        result = comfy.run(_flux("test/flux_storage", storage))
        assert result.status == "success", f"{storage}: {result.summary()}"
        assert np.abs(_pixels(comfy, result) - before).max() > 0, f"{storage}: nothing was stored"
    again = comfy.run(_flux("test/flux_storage_plain"))
    assert again.status == "success", again.summary()
    assert np.array_equal(_pixels(comfy, again), before)
