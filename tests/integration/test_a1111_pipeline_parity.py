"""The real server's /sdapi/v1/img2img equals diffusers' img2img pipeline from the same picture.

A user checks the API against `StableDiffusionImg2ImgPipeline(image=<PIL>)`:
same tiny model (the diffusers folder the server serves, rebuilt here from the
same code and seed), same PIL picture, seed, sampler, steps, strength and CFG.
Both sample the VAE posterior with the seed before the noise (A1111's way),
so the pictures agree. The API answers a PNG, so the comparison is in 8-bit:
the pipeline's float image is quantised as ComfyUI saves it (x * 255 cut to
an integer); a float difference below 1e-4 can flip a value sitting on a
level boundary by one, never more.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
import torch
from PIL import Image

import pil_inputs
import tiny_models
from harness.models import SD15_DIFFUSERS

pytestmark = pytest.mark.integration

SEED = 21
STEPS = 6
STRENGTH = 0.6
CFG = 6.0


def _png_b64(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _reference(picture: Image.Image, prompt: str, negative: str, sampler: str, folder) -> np.ndarray:
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    from diffusers_studio.nodes.engine.schedulers import make_scheduler

    tiny = tiny_models.sd1_pipeline(0)  # what harness.models wrote as SD15_DIFFUSERS
    pipe = StableDiffusionImg2ImgPipeline(**tiny.components, requires_safety_checker=False)
    # The scheduler configuration as the server reads it from the model folder (a saved config
    # no longer marks which values were defaults, which the sampler mapping looks at).
    tiny.scheduler.save_config(str(folder))
    pipe.scheduler = make_scheduler(dict(DDIMScheduler.load_config(str(folder))), sampler, "normal")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=prompt, negative_prompt=negative, image=picture, strength=STRENGTH, num_inference_steps=STEPS,
               guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED), output_type="np").images[0]
    return np.clip(out * 255.0, 0, 255).astype(np.uint8).astype(np.int16)


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_img2img_route_equals_the_img2img_pipeline_fed_the_same_picture(idle_comfy, comfy_server, sampler,
                                                                        tmp_path):
    picture = pil_inputs.picture(7)
    prompt, negative = "a lighthouse at dusk", "blurry"
    body = {
        "init_images": [_png_b64(picture)], "prompt": prompt, "negative_prompt": negative, "seed": SEED,
        "steps": STEPS, "denoising_strength": STRENGTH, "cfg_scale": CFG, "sampler_name": sampler,
        "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": SD15_DIFFUSERS},
    }
    response = requests.post(comfy_server.url + "/sdapi/v1/img2img", json=body, timeout=300)
    assert response.status_code == 200, response.text[:3000]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    ours = np.asarray(image.convert("RGB"), dtype=np.int16)
    expected = _reference(picture, prompt, negative, sampler, tmp_path)
    assert ours.shape == expected.shape == (64, 64, 3)
    diff = np.abs(ours - expected)
    assert int(diff.max()) <= 1, f"max difference {int(diff.max())}/255"
    assert float((diff == 0).mean()) >= 0.99, f"only {float((diff == 0).mean()):.3%} of the values are equal"
