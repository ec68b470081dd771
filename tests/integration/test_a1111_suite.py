"""The requests of A1111's own API test suite (its test/ folder), against the real server.

Each request is A1111's, with the tiny SD1.5 checkpoint chosen by
override_settings (A1111's suite runs on whatever model is loaded). `tiling`
runs through seamless tiling and the "sd upscale" script through DSSDUpscale,
both recorded in the infotext. `restore_faces` answers 422 naming what to
install (no face-restoration model here). Also: styles from styles.csv in
ComfyUI's user folder, and the endpoints A1111's suite lists.
"""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image

from harness.models import SD15_CHECKPOINT

pytestmark = pytest.mark.integration

API = "/sdapi/v1"

TXT2IMG = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
    "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
    "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
    "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
    "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    "override_settings": {"sd_model_checkpoint": SD15_CHECKPOINT},
}


@pytest.fixture
def server(idle_comfy, comfy_server):
    return comfy_server


def _post(server, path, body):
    return requests.post(server.url + API + path, json=body, timeout=300)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"negative_prompt": "example negative prompt"},
        {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
        {"height": 128},
        {"enable_hr": True},
        {"sampler_index": "PLMS"},
        {"sampler_index": "DDIM"},
        {"sampler_index": "UniPC"},
        {"n_iter": 2},
        {"batch_size": 2},
    ],
    ids=["simple", "negative", "complex-prompt", "not-square", "hrfix", "plms", "ddim", "unipc", "n-iter", "batch"],
)
def test_a1111_txt2img_requests(server, change):
    response = _post(server, "/txt2img", {**TXT2IMG, **change})
    assert response.status_code == 200, response.text[:2000]
    body = response.json()
    assert len(body["images"]) == change.get("n_iter", 1) * change.get("batch_size", 1)


def _b64(array: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _img2img_request() -> dict:
    y, x = np.mgrid[0:64, 0:64]
    picture = np.stack([x * 3 % 256, y * 5 % 256, (x + y) * 2 % 256], axis=-1).astype(np.uint8)
    keys = ("batch_size", "cfg_scale", "eta", "height", "n_iter", "negative_prompt", "prompt", "restore_faces",
            "s_churn", "s_noise", "s_tmax", "s_tmin", "sampler_index", "seed", "seed_resize_from_h",
            "seed_resize_from_w", "steps", "styles", "subseed", "subseed_strength", "tiling", "width",
            "override_settings")
    return {**{k: TXT2IMG[k] for k in keys}, "denoising_strength": 0.75, "include_init_images": False,
            "init_images": [_b64(picture)], "inpaint_full_res": False, "inpaint_full_res_padding": 0,
            "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None, "mask_blur": 4, "resize_mode": 0}


@pytest.mark.parametrize("masked, invert", [(False, False), (True, False), (True, True)],
                         ids=["simple", "masked", "inverted-mask"])
def test_a1111_img2img_requests(server, masked, invert):
    body = _img2img_request()
    if masked:
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[16:48, 16:48] = 255
        body.update(mask=_b64(mask), inpainting_mask_invert=invert)
    response = _post(server, "/img2img", body)
    assert response.status_code == 200, response.text[:2000]
    assert len(response.json()["images"]) == 1


def test_a1111_restore_faces_without_a_model_says_what_to_install(server):
    response = _post(server, "/txt2img", {**TXT2IMG, "restore_faces": True})
    assert response.status_code == 422, response.text[:2000]
    assert "models/facerestore_models" in response.json()["detail"]


def _picture(body: dict, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body["images"][index]))).convert("RGB"))


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_a1111_tiling_is_honoured(server, kind):
    body = {**TXT2IMG, "seed": 5} if kind == "txt2img" else {**_img2img_request(), "seed": 5}
    tiled = _post(server, f"/{kind}", {**body, "tiling": True})
    assert tiled.status_code == 200, tiled.text[:2000]
    info = json.loads(tiled.json()["info"])
    assert "Tiling: True" in info["infotexts"][0]
    plain = _post(server, f"/{kind}", {**body, "tiling": False})
    assert plain.status_code == 200 and "Tiling" not in json.loads(plain.json()["info"])["infotexts"][0]
    # Same seed, same request: only the wrapped convolutions differ.
    assert _picture(tiled.json()).shape == _picture(plain.json()).shape == (64, 64, 3)
    assert np.abs(_picture(tiled.json()).astype(int) - _picture(plain.json()).astype(int)).max() > 0


def test_a1111_sd_upscale_script(server):
    """A1111's test_img2img_sd_upscale_performed: script_args [info, overlap, upscaler, scale_factor]."""
    body = {**_img2img_request(), "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0], "seed": 3}
    response = _post(server, "/img2img", body)
    assert response.status_code == 200, response.text[:2000]
    info = json.loads(response.json()["info"])
    assert len(response.json()["images"]) == 1
    assert _picture(response.json()).shape == (128, 128, 3)  # 64x64 init image, scale 2, 64x64 tiles
    assert "SD upscale overlap: 8, SD upscale upscaler: Lanczos" in info["infotexts"][0]
    # 1: Lanczos, as GET /sdapi/v1/upscalers lists it (another seed: ComfyUI would answer a repeat from its cache)
    by_index = _post(server, "/img2img", {**body, "script_args": ["", 8, 1, 2.0], "seed": 4})
    assert by_index.status_code == 200, by_index.text[:2000]
    assert "SD upscale upscaler: Lanczos" in json.loads(by_index.json()["info"])["infotexts"][0]
    assert _picture(by_index.json()).shape == (128, 128, 3)

    unknown = _post(server, "/img2img", {**body, "script_args": ["", 8, 99, 2.0]})
    assert unknown.status_code == 422 and "upscaler index 99" in unknown.json()["detail"]


@pytest.mark.parametrize(
    "url",
    ["cmd-flags", "samplers", "upscalers", "sd-models", "hypernetworks", "face-restorers", "realesrgan-models",
     "prompt-styles", "embeddings"],
)
def test_a1111_get_urls(server, url):
    response = requests.get(f"{server.url}{API}/{url}", timeout=30)
    assert response.status_code == 200, response.text[:2000]
    assert isinstance(response.json(), dict if url in ("cmd-flags", "embeddings") else list)


def test_a1111_options_write_send_seed(server):
    url = server.url + API + "/options"
    before = requests.get(url, timeout=30).json()["send_seed"]
    assert requests.post(url, json={"send_seed": not before}, timeout=30).status_code == 200
    assert requests.get(url, timeout=30).json()["send_seed"] is (not before)
    assert requests.post(url, json={"send_seed": before}, timeout=30).status_code == 200


def test_face_restorers_list_the_folder_and_styles_apply(server):
    folder = server.base_dir / "models" / "facerestore_models"
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "codeformer-v0.1.0.pth"
    styles = server.base_dir / "user" / "default" / "diffusers_studio" / "styles.csv"
    styles.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.write_bytes(b"not a real model")
        restorers = requests.get(server.url + API + "/face-restorers", timeout=30).json()
        assert {"name": "CodeFormer", "cmd_dir": "models/facerestore_models/codeformer-v0.1.0.pth"} in restorers
        refused = _post(server, "/txt2img", {**TXT2IMG, "restore_faces": True})
        assert refused.status_code == 422 and "CodeFormer" in refused.json()["detail"]

        styles.write_text("name,prompt,negative_prompt\nInk,\"ink drawing of {prompt}\",colour\n", encoding="utf-8")
        listed = requests.get(server.url + API + "/prompt-styles", timeout=30).json()
        assert listed == [{"name": "Ink", "prompt": "ink drawing of {prompt}", "negative_prompt": "colour"}]
        result = _post(server, "/txt2img", {**TXT2IMG, "steps": 1, "styles": ["Ink"], "negative_prompt": "blurry"})
        assert result.status_code == 200, result.text[:2000]
        info = json.loads(result.json()["info"])
        assert info["all_prompts"] == ["ink drawing of example prompt"] and info["styles"] == ["Ink"]
        assert info["infotexts"][0].startswith("ink drawing of example prompt\nNegative prompt: blurry, colour\n")
        unknown = _post(server, "/txt2img", {**TXT2IMG, "styles": ["Oil"]})
        assert unknown.status_code == 422 and "'Oil'" in unknown.json()["detail"]
    finally:
        model.unlink(missing_ok=True)
        styles.unlink(missing_ok=True)


def test_embeddings_are_listed_in_a1111_shape_and_used_by_name(server):
    import os

    import torch

    folder = server.base_dir / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    good, evil = folder / "tinyneg.pt", folder / "evil.pt"
    try:
        vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))  # the tiny SD1 encoder's width
        torch.save({"string_to_param": {"*": vectors}, "step": 1500, "sd_checkpoint": "abcd",
                    "sd_checkpoint_name": "v1-5"}, good)
        torch.save({"string_to_param": {"*": vectors}, "hook": os.getcwd}, evil)
        listing = requests.get(server.url + API + "/embeddings", timeout=30).json()
        assert listing["loaded"]["tinyneg"] == {"step": 1500, "sd_checkpoint": "abcd", "sd_checkpoint_name": "v1-5",
                                                "shape": 32, "vectors": 2}
        assert "evil" in listing["skipped"] and "evil" not in listing["loaded"]
        body = {**TXT2IMG, "steps": 1, "seed": 5, "sampler_index": "Euler"}
        plain = _post(server, "/txt2img", body)
        named = _post(server, "/txt2img", {**body, "negative_prompt": "tinyneg"})
        comfy = _post(server, "/txt2img", {**body, "negative_prompt": "embedding:tinyneg"})
        assert plain.status_code == named.status_code == comfy.status_code == 200, named.text[:2000]
        pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB"))
                  for r in (plain, named, comfy)]
        assert np.array_equal(pixels[1], pixels[2]) and not np.array_equal(pixels[0], pixels[1])
        refused = _post(server, "/txt2img", {**body, "prompt": "embedding:evil"})
        assert refused.status_code >= 400 and "carries code" in refused.text
    finally:
        good.unlink(missing_ok=True)
        evil.unlink(missing_ok=True)
