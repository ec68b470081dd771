"""Benchmark-only ComfyUI custom node: diffusers' own pipeline, run inside the server.

Why: the side-by-side benchmark times three ways of making the same image in
ONE ComfyUI process (so that a shared machine's drift hits all three alike):
the pack's DS nodes, ComfyUI's native nodes, and this node, which calls
diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline /
StableDiffusion3Pipeline / FluxPipeline (flux_fp8.py) directly, as a
plain diffusers user would. Its IMAGE goes to the same SaveImage node as the
other two ways. Never shipped: the benchmark links this folder into a test
server's custom_nodes/ only.

Also here, for the benchmark's client: GET /ds_bench/memory (the process's
CUDA memory: allocated, reserved, peak) and POST /ds_bench/reset_peak, read
between prompts so each prompt's peak is its own.
"""
from __future__ import annotations

import logging
import os
import time

import folder_paths
import torch
from aiohttp import web
from server import PromptServer

log = logging.getLogger(__name__)

_PIPELINES: dict = {}
# The benchmark's SD3.5 folder has no T5 (SD3 allows it) and no IP-Adapter image encoder.
_ABSENT = {"sd35m": dict(text_encoder_3=None, tokenizer_3=None, image_encoder=None, feature_extractor=None)}
_PIPELINE_CLASSES = {
    "sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd35m": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}
# FLUX.1 schnell's T5 length (ComfyUI pads T5 to 256 tokens too).
_CALL_EXTRAS = {"flux": dict(max_sequence_length=256)}


def _pipeline(name: str, kind: str, dtype: str):
    """The pipeline of models/diffusers/<name>, loaded once per (name, kind, dtype) and kept."""
    key = (name, kind, dtype)
    if key in _PIPELINES:
        return _PIPELINES[key], 0.0
    import diffusers

    roots = folder_paths.get_folder_paths("diffusers")
    path = next((os.path.join(root, name) for root in roots if os.path.isdir(os.path.join(root, name))), None)
    if path is None:
        raise ValueError(f"model_folder {name!r} is not a folder under models/diffusers/")
    start = time.perf_counter()
    if kind == "flux":  # fp8 files kept in float8 with diffusers' layerwise casting (flux_fp8.py)
        from .flux_fp8 import load_pipeline

        pipe = load_pipeline(path, getattr(torch, dtype))
    else:
        cls = getattr(diffusers, _PIPELINE_CLASSES[kind])
        pipe = cls.from_pretrained(path, torch_dtype=getattr(torch, dtype), local_files_only=True,
                                   **_ABSENT.get(kind, {}))
    if kind not in ("sd35m", "flux"):  # the flow models' FlowMatchEulerDiscreteScheduler is their Euler already
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    _PIPELINES[key] = pipe
    return pipe, time.perf_counter() - start


class DSBenchDiffusersPipeline:
    """diffusers' pipeline called as is: Euler (normal schedule), cfg, one image."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_folder": ("STRING", {"default": "", "tooltip": "Folder under models/diffusers/."}),
                "kind": (list(_PIPELINE_CLASSES), {"tooltip": "Which diffusers pipeline class loads the folder."}),
                "dtype": (["float32", "float16"], {"tooltip": "torch_dtype for from_pretrained."}),
                "prompt": ("STRING", {"multiline": True, "tooltip": "Positive prompt."}),
                "negative": ("STRING", {"multiline": True, "tooltip": "Negative prompt."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Width in pixels."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Height in pixels."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "num_inference_steps."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "tooltip": "guidance_scale."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip": "CPU generator seed."}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing/benchmark"

    def run(self, model_folder, kind, dtype, prompt, negative, width, height, steps, cfg, seed):
        pipe, load_s = _pipeline(model_folder, kind, dtype)
        stamps = []

        def on_step_end(_pipe, _i, _t, kwargs):
            # No CUDA synchronise here: it would stop the CPU queueing the next
            # step while the GPU runs this one, a cost the other two ways do not
            # pay. On CUDA the stamps are launch times (a rough breakdown only);
            # the prompt's time, which is what the benchmark compares, ends after
            # the image has reached the CPU.
            stamps.append(time.perf_counter())
            return kwargs

        start = time.perf_counter()
        images = pipe(
            prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=cfg,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pt",
            callback_on_step_end=on_step_end,
            **_CALL_EXTRAS.get(kind, {}),
        ).images
        image = images.permute(0, 2, 3, 1).float().cpu()  # ComfyUI's IMAGE: B, H, W, C in [0, 1]
        end = time.perf_counter()
        timings = {
            "load_s": load_s,
            "call_s": end - start,
            "before_first_step_end_s": stamps[0] - start if stamps else None,
            "after_last_step_s": end - stamps[-1] if stamps else None,
            "steps_seen": len(stamps),
        }
        return {"ui": {"ds_bench": [timings]}, "result": (image,)}


NODE_CLASS_MAPPINGS = {"DSBenchDiffusersPipeline": DSBenchDiffusersPipeline}
NODE_DISPLAY_NAME_MAPPINGS = {"DSBenchDiffusersPipeline": "DS Bench: diffusers pipeline (benchmark only)"}


def _memory() -> dict:
    if not torch.cuda.is_available():
        return {"cuda": False}
    torch.cuda.synchronize()
    return {
        "cuda": True,
        "allocated": torch.cuda.memory_allocated(),
        "reserved": torch.cuda.memory_reserved(),
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "peak_reserved": torch.cuda.max_memory_reserved(),
    }


@PromptServer.instance.routes.get("/ds_bench/memory")
async def _get_memory(_request):
    return web.json_response(_memory())


@PromptServer.instance.routes.post("/ds_bench/reset_peak")
async def _reset_peak(_request):
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return web.json_response(_memory())
