"""The A1111 API's extras against the real server: img2img masks (inpainting),
sd-webui-controlnet units in alwayson_scripts, and <lora:...> prompt tags.

Tiny models, 64x64 pictures, two steps: quick on a CPU.
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
from harness.models_controlnet import SD15_CANNY
from harness.models_inpaint import SD15_INPAINTING
from harness.models_lora import SD15_LORA

pytestmark = pytest.mark.integration

API = "/sdapi/v1"


@pytest.fixture
def server(idle_comfy, comfy_server):
    return comfy_server


def _b64(array: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _picture(w=64, h=64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 3 % 256, y * 5 % 256, (x + y) * 2 % 256], axis=-1).astype(np.uint8)


def _mask(w, h, box) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def _pixels(b64: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _post(server, path, body):
    return requests.post(server.url + path, json=body, timeout=180)


def _ok(response) -> dict:
    assert response.status_code == 200, response.text[:3000]
    return response.json()


def _body(**fields) -> dict:
    body = {"prompt": "a red apple", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": SD15_CHECKPOINT}}
    body.update(fields)
    return body


# ------------------------------------------------------------------ inpaint
@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_img2img_mask_keeps_the_outside(server, fill):
    picture = _picture()
    result = _ok(_post(server, API + "/img2img", _body(
        init_images=[_b64(picture)], mask=_b64(_mask(64, 64, (0, 0, 24, 64))), mask_blur=2,
        inpainting_fill=fill, inpaint_full_res=False, denoising_strength=0.9)))
    out = _pixels(result["images"][0])
    assert out.shape == (64, 64, 3)
    assert np.array_equal(out[:, 40:], picture[:, 40:].astype(np.int16))  # outside the feathered mask: exact
    assert np.abs(out[:, :16] - picture[:, :16]).mean() > 1  # inside: repainted
    assert "Mask blur: 2" in json.loads(result["info"])["infotexts"][0]


def test_img2img_mask_invert_and_inpainting_checkpoint(server):
    picture = _picture()
    result = _ok(_post(server, API + "/img2img", _body(
        init_images=[_b64(picture)], mask=_b64(_mask(64, 64, (0, 0, 24, 64))), mask_blur=0,
        inpainting_mask_invert=1, inpaint_full_res=False, inpainting_fill=1,
        override_settings={"sd_model_checkpoint": SD15_INPAINTING})))
    out = _pixels(result["images"][0])
    assert np.array_equal(out[:, :24], picture[:, :24].astype(np.int16))  # the (inverted) outside
    assert np.abs(out[:, 32:] - picture[:, 32:]).mean() > 1


def test_img2img_inpaint_full_res_pastes_back_at_the_picture_size(server):
    picture = _picture(80, 48)
    mask = _mask(80, 48, (40, 16, 56, 32))
    result = _ok(_post(server, API + "/img2img", _body(
        init_images=[_b64(picture)], mask=_b64(mask), mask_blur=0, inpaint_full_res=True,
        inpaint_full_res_padding=8, denoising_strength=1.0)))
    out = _pixels(result["images"][0])
    assert out.shape == (48, 80, 3)
    outside = _mask(80, 48, (36, 12, 60, 36)) == 0  # the box and a margin: the crop is scaled there and back
    assert np.array_equal(out[outside], picture[outside].astype(np.int16))
    assert np.abs(out[16:32, 40:56] - picture[16:32, 40:56]).mean() > 1
    text = json.loads(result["info"])["infotexts"][0]
    assert "Inpaint area: Only masked" in text and "Masked area padding: 8" in text


def test_img2img_bad_mask_is_a_422(server):
    response = _post(server, API + "/img2img", _body(init_images=[_b64(_picture())], mask="not base64!"))
    assert response.status_code == 422, response.text


# --------------------------------------------------------------- controlnet
def _unit(**fields) -> dict:
    unit = {"image": _b64(_picture()), "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]",
            "weight": 1.5, "guidance_start": 0.0, "guidance_end": 1.0, "threshold_a": 50, "threshold_b": 150}
    unit.update(fields)
    return unit


def test_controlnet_model_list(server):
    listing = _ok(requests.get(server.url + "/controlnet/model_list", timeout=30))
    assert SD15_CANNY in listing["model_list"]


def test_controlnet_units_change_the_picture(server):
    plain = _ok(_post(server, API + "/txt2img", _body(seed=9)))
    controlled = _ok(_post(server, API + "/txt2img", _body(seed=9, alwayson_scripts={"controlnet": {"args": [
        _unit(), _unit(module="invert (from white bg & black line)", model="control_v11p_sd15_canny",
                       control_mode="ControlNet is more important", guidance_end=0.5),
        _unit(enabled=False, model="missing"),
    ]}})))
    assert np.abs(_pixels(plain["images"][0]) - _pixels(controlled["images"][0])).max() > 0
    text = json.loads(controlled["info"])["infotexts"][0]
    assert "ControlNet 0" in text and "ControlNet 1" in text and "ControlNet 2" not in text


def test_controlnet_on_img2img_uses_the_init_image(server):
    unit = _unit(module="none", control_mode=0)
    del unit["image"]
    result = _ok(_post(server, API + "/img2img", _body(init_images=[_b64(_picture())], denoising_strength=0.6,
                                                       alwayson_scripts={"ControlNet": {"args": [unit]}})))
    assert len(result["images"]) == 1


@pytest.mark.parametrize("unit, status", [
    ({"model": "no_such_controlnet"}, 404),
    ({"control_mode": 1}, 422),
    ({"module": "openpose"}, 422),
    ({"weight": "heavy"}, 422),
    ({"image": None}, 422),  # txt2img needs a control image
])
def test_controlnet_mistakes(server, unit, status):
    response = _post(server, API + "/txt2img", _body(alwayson_scripts={"controlnet": {"args": [_unit(**unit)]}}))
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "detail", "body", "errors"}


# --------------------------------------------------------------------- lora
def test_lora_tag_applies_the_lora_and_stays_in_the_infotext(server):
    stem = SD15_LORA.rsplit(".", 1)[0]
    plain = _ok(_post(server, API + "/txt2img", _body(seed=4)))
    tagged = _ok(_post(server, API + "/txt2img", _body(seed=4, prompt=f"a red apple <lora:{stem}:1.5>")))
    assert np.abs(_pixels(plain["images"][0]) - _pixels(tagged["images"][0])).max() > 0
    info = json.loads(tagged["info"])
    assert info["prompt"] == f"a red apple <lora:{stem}:1.5>"
    disabled = _ok(_post(server, API + "/txt2img", _body(seed=4, prompt=f"a red apple <lora:{stem}:1.5>",
                                                         disable_extra_networks=True)))
    assert np.array_equal(_pixels(plain["images"][0]), _pixels(disabled["images"][0]))


def test_lora_tag_in_hr_prompt(server):
    stem = SD15_LORA.rsplit(".", 1)[0]
    result = _ok(_post(server, API + "/txt2img", _body(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1,
                                                       hr_prompt=f"a green apple <lora:{stem}>")))
    assert Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).size == (96, 96)


def test_unknown_lora_is_a_404(server):
    response = _post(server, API + "/txt2img", _body(prompt="a red apple <lora:nobody_has_this:0.5>"))
    assert response.status_code == 404, response.text
    assert "nobody_has_this" in response.json()["detail"]


def test_mask_controlnet_and_lora_together(server):
    stem = SD15_LORA.rsplit(".", 1)[0]
    picture = _picture()
    unit = _unit(module="canny", model=SD15_CANNY, control_mode="Balanced")
    del unit["image"]  # the (cropped) init image
    result = _ok(_post(server, API + "/img2img", _body(
        prompt=f"a red apple <lora:{stem}:0.7>", init_images=[_b64(picture)],
        mask=_b64(_mask(64, 64, (16, 16, 40, 40))), mask_blur=0, inpaint_full_res=True,
        inpaint_full_res_padding=4, alwayson_scripts={"controlnet": {"args": [unit]}})))
    out = _pixels(result["images"][0])
    keep = _mask(64, 64, (12, 12, 44, 44)) == 0
    assert np.array_equal(out[keep], picture[keep].astype(np.int16))
    text = json.loads(result["info"])["infotexts"][0]
    assert text.startswith(f"a red apple <lora:{stem}:0.7>") and "ControlNet 0" in text
