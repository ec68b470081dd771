"""API-format prompts built from the pack's nodes, and test-size shrinking.

Tests that probe one behaviour (progress, cancel, seeds, errors) build their
graph here instead of editing a shipped workflow, so a change to an example
workflow cannot change what those tests check. `shrink` is the one place
where shipped workflows are made cheap for a CPU: smaller pictures, fewer
steps, batch 1, nothing else touched.
"""
from __future__ import annotations

import copy
from typing import Optional

from .models import SD15_CHECKPOINT

# Node ids of the graphs built here, so tests can point at a node.
LOADER, POSITIVE, NEGATIVE, LATENT, SAMPLER, DECODE, SAVE, LOAD_IMAGE, ENCODE = (
    "1", "2", "3", "4", "5", "6", "7", "8", "9",
)


def _sampler(seed: int, steps: int, denoise: float, latent_source: str, **overrides) -> dict:
    inputs = {
        "model": [LOADER, 0],
        "positive": [POSITIVE, 0],
        "negative": [NEGATIVE, 0],
        "latent_image": [latent_source, 0],
        "seed": seed,
        "steps": steps,
        "cfg": 7.0,
        "sampler_name": "Euler a",
        "schedule": "normal",
        "denoise": denoise,
        "start_step": 0,
        "end_step": 10000,
        "variation_seed": 0,
        "variation_strength": 0.0,
        "batch_seed_mode": "increment",
    }
    inputs.update(overrides)
    return {"class_type": "DSSampler", "inputs": inputs}


def _common(model: str, prompt: str, prefix: str) -> dict:
    return {
        LOADER: {"class_type": "DSLoadModel", "inputs": {"model_name": model, "dtype": "float32"}},
        POSITIVE: {
            "class_type": "DSTextEncode",
            "inputs": {"text_encoder": [LOADER, 1], "text": prompt, "clip_skip": 1},
        },
        NEGATIVE: {
            "class_type": "DSTextEncode",
            "inputs": {"text_encoder": [LOADER, 1], "text": "blurry", "clip_skip": 1},
        },
        DECODE: {
            "class_type": "DSVAEDecode",
            "inputs": {"vae": [LOADER, 2], "samples": [SAMPLER, 0], "tiled": False, "tile_size": 512},
        },
        SAVE: {"class_type": "SaveImage", "inputs": {"images": [DECODE, 0], "filename_prefix": prefix}},
    }


def txt2img(
    model: str = SD15_CHECKPOINT,
    *,
    size: int = 64,
    steps: int = 3,
    seed: int = 1,
    batch: int = 1,
    prompt: str = "a red apple on a table",
    prefix: str = "test/txt2img",
    **sampler_overrides,
) -> dict:
    """DSLoadModel -> DSTextEncode x2 + EmptyLatentImage -> DSSampler -> DSVAEDecode -> SaveImage."""
    graph = _common(model, prompt, prefix)
    graph[LATENT] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": size, "height": size, "batch_size": batch},
    }
    graph[SAMPLER] = _sampler(seed, steps, 1.0, LATENT, **sampler_overrides)
    return graph


def img2img(
    image: str,
    model: str = SD15_CHECKPOINT,
    *,
    steps: int = 4,
    seed: int = 1,
    denoise: float = 0.6,
    prompt: str = "an oil painting",
    prefix: str = "test/img2img",
    **sampler_overrides,
) -> dict:
    """LoadImage -> DSVAEEncode -> DSSampler(denoise) -> DSVAEDecode -> SaveImage."""
    graph = _common(model, prompt, prefix)
    graph[LOAD_IMAGE] = {"class_type": "LoadImage", "inputs": {"image": image}}
    graph[ENCODE] = {
        "class_type": "DSVAEEncode",
        "inputs": {"vae": [LOADER, 2], "pixels": [LOAD_IMAGE, 0], "tiled": False, "tile_size": 512},
    }
    graph[SAMPLER] = _sampler(seed, steps, denoise, ENCODE, **sampler_overrides)
    return graph


def shrink(prompt: dict, *, size: int = 64, max_steps: int = 3, batch: Optional[int] = 1) -> dict:
    """A copy of `prompt` made cheap for a CPU: every EmptyLatentImage at
    `size` x `size` (batch `batch`), every DSSampler at most `max_steps` steps
    (a start/end step inside the schedule scaled with it, so a base + refiner
    hand-off stays one).
    Everything else (models, samplers, schedules, denoise, prompts, images)
    stays as the workflow ships it."""
    small = copy.deepcopy(prompt)
    for node in small.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs["width"] = inputs["height"] = size
            if batch is not None:
                inputs["batch_size"] = batch
        elif node["class_type"] == "DSSampler" and isinstance(inputs.get("steps"), int):
            steps = inputs["steps"]
            inputs["steps"] = min(steps, max_steps)
            # A split schedule (base + refiner hand-off) keeps its proportions.
            for key in ("start_step", "end_step"):
                value = inputs.get(key)
                if isinstance(value, int) and 0 < value < steps:
                    inputs[key] = max(1, round(value * inputs["steps"] / steps)) if key == "end_step" else min(
                        round(value * inputs["steps"] / steps), inputs["steps"] - 1)
    return small
