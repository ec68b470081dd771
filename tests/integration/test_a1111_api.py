"""The A1111 web UI API (/sdapi/v1) against the real server with the tiny models.

Every request runs as a real ComfyUI prompt of the pack's nodes; pictures are
64x64 with two or three steps so the module stays quick on a CPU.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from harness.models import SD15_CHECKPOINT, SD15_DIFFUSERS, SDXL_CHECKPOINT

pytestmark = pytest.mark.integration

API = "/sdapi/v1"


def _post(server, path, body, timeout=180):
    return requests.post(server.url + path, json=body, timeout=timeout)


def _get(server, path, timeout=30):
    return requests.get(server.url + path, timeout=timeout)


def _txt2img(server, **fields):
    body = {"prompt": "a red apple", "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64,
            "sampler_name": "Euler a", "seed": 11, "override_settings": {"sd_model_checkpoint": SD15_CHECKPOINT}}
    body.update(fields)
    return _post(server, API + "/txt2img", body)


def _ok(response) -> dict:
    assert response.status_code == 200, response.text[:3000]
    return response.json()


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(_decode(b64).convert("RGB"), dtype=np.int16)


def _error_shape(response, status):
    assert response.status_code == status, response.text[:2000]
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}, body
    return body


@pytest.fixture
def server(idle_comfy, comfy_server):
    return comfy_server


@pytest.fixture
def batch_run(server, session_cache):
    if "a1111_batch" not in session_cache:
        session_cache["a1111_batch"] = _ok(_txt2img(server, seed=123, batch_size=2))
    return session_cache["a1111_batch"]


def test_txt2img_answers_pngs_with_the_parameters_chunk(batch_run):
    assert len(batch_run["images"]) == 2
    info = json.loads(batch_run["info"])
    for index, b64 in enumerate(batch_run["images"]):
        image = _decode(b64)
        assert image.format == "PNG" and image.size == (64, 64)
        text = image.info["parameters"]
        assert text == info["infotexts"][index]
        assert text.startswith("a red apple\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, ")
        assert f"Seed: {123 + index}," in text and "Size: 64x64" in text and "Model: v1-5-pruned-emaonly" in text


def test_txt2img_info_numbers_seeds_as_a1111(batch_run):
    info = json.loads(batch_run["info"])
    assert info["seed"] == 123 and info["all_seeds"] == [123, 124]
    assert info["all_subseeds"] == [info["subseed"], info["subseed"] + 1]
    for key, value in {"prompt": "a red apple", "negative_prompt": "blurry", "sampler_name": "Euler a",
                       "steps": 2, "cfg_scale": 7.0, "width": 64, "height": 64,
                       "sd_model_name": "v1-5-pruned-emaonly"}.items():
        assert info[key] == value, (key, info[key])
    assert info["all_prompts"] == ["a red apple"] * 2
    params = batch_run["parameters"]
    assert params["seed"] == 123 and params["batch_size"] == 2 and params["n_iter"] == 1
    assert params["cfg_scale"] == 7.0 and params["send_images"] is True  # defaults filled in


def test_same_seed_gives_the_same_image(server, batch_run):
    """Image 1 of a batch (seed 124) is the picture a single run with seed 124 makes."""
    single = _ok(_txt2img(server, seed=124))
    assert len(single["images"]) == 1
    difference = np.abs(_pixels(single["images"][0]) - _pixels(batch_run["images"][1])).max()
    assert difference <= 2, difference
    assert np.abs(_pixels(batch_run["images"][0]) - _pixels(batch_run["images"][1])).max() > 2


def test_n_iter_combined_sampler_name_and_random_seed(server):
    result = _ok(_txt2img(server, seed=-1, n_iter=2, sampler_name="DPM++ 2M Karras",
                          override_settings={"sd_model_checkpoint": SD15_CHECKPOINT, "CLIP_stop_at_last_layers": 2}))
    info = json.loads(result["info"])
    assert len(result["images"]) == 2
    seed = info["seed"]
    assert 0 <= seed < 2**32 and info["all_seeds"] == [seed, seed + 1]
    assert info["sampler_name"] == "DPM++ 2M" and info["sd_model_name"] == "v1-5-pruned-emaonly"
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in info["infotexts"][1]
    assert "Clip skip: 2" in info["infotexts"][0]
    # override_settings does not persist
    assert _ok(_get(server, API + "/options"))["CLIP_stop_at_last_layers"] == 1


def test_variation_seed_keeps_the_main_seed(server):
    info = json.loads(_ok(_txt2img(server, seed=7, subseed=50, subseed_strength=0.5, batch_size=2))["info"])
    assert info["all_seeds"] == [7, 7] and info["all_subseeds"] == [50, 51]
    assert "Variation seed: 51, Variation seed strength: 0.5" in info["infotexts"][1]


def test_send_images_false_and_save_images(server):
    result = _ok(_txt2img(server, seed=31, send_images=False, save_images=True))
    assert result["images"] == []
    saved = sorted((server.base_dir / "output").rglob("txt2img_*.png"))
    assert saved, "save_images wrote nothing to ComfyUI's output folder"
    with Image.open(saved[-1]) as image:
        assert "Seed: 31," in image.info["parameters"] and "prompt" in image.info


def test_img2img_round_trip(server):
    y, x = np.mgrid[0:48, 0:80]
    picture = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "prompt": "an oil painting",
            "denoising_strength": 0.5, "steps": 3, "width": 64, "height": 64, "seed": 5, "resize_mode": 1,
            "batch_size": 2}
    result = _ok(_post(server, API + "/img2img", body))
    assert len(result["images"]) == 2 and all(_decode(b).size == (64, 64) for b in result["images"])
    info = json.loads(result["info"])
    assert "Denoising strength: 0.5" in info["infotexts"][0] and info["all_seeds"] == [5, 6]
    assert result["parameters"]["init_images"] is None  # include_init_images is false


def test_hires_fix_and_refiner(server):
    hires = _ok(_txt2img(server, seed=21, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                         denoising_strength=0.6))
    assert _decode(hires["images"][0]).size == (96, 96)
    text = json.loads(hires["info"])["infotexts"][0]
    assert "Size: 64x64" in text and "Hires upscale: 1.5" in text and "Denoising strength: 0.6" in text
    refined = _ok(_txt2img(server, seed=22, steps=4, refiner_checkpoint=SD15_CHECKPOINT, refiner_switch_at=0.5))
    assert "Refiner: v1-5-pruned-emaonly, Refiner switch at: 0.5" in json.loads(refined["info"])["infotexts"][0]


def test_sdxl_base_with_the_sdxl_refiner(server):
    """A1111's usual pair: sd_xl_base_1.0 hands off to sd_xl_refiner_1.0 (bigG only, aesthetic score)."""
    from harness.models_refiner import SDXL_REFINER

    refined = _ok(_txt2img(server, seed=23, steps=4, refiner_checkpoint=SDXL_REFINER, refiner_switch_at=0.5,
                           override_settings={"sd_model_checkpoint": SDXL_CHECKPOINT}))
    assert _decode(refined["images"][0]).size == (64, 64)
    assert "Refiner: sd_xl_refiner_1.0, Refiner switch at: 0.5" in json.loads(refined["info"])["infotexts"][0]


def test_wrong_type_is_a_422(server):
    response = _txt2img(server, steps="many")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "steps"] and detail[0]["msg"] and detail[0]["type"]
    for bad in ({"width": 65}, {"cfg_scale": -1}, {"batch_size": 0}):
        response = _txt2img(server, **bad)
        assert response.status_code == 422, (bad, response.text)
    response = requests.post(server.url + API + "/txt2img", data="{not json", timeout=30)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][0] == "body"


def test_application_errors_use_a1111_shape(server):
    body = _error_shape(_txt2img(server, sampler_name="Euler z"), 404)
    assert body["detail"] == "Sampler not found" and body["error"] == "HTTPException"
    body = _error_shape(_txt2img(server, override_settings={"sd_model_checkpoint": "nope.safetensors"}), 404)
    assert "nope.safetensors" in body["detail"]
    _error_shape(_txt2img(server, override_settings={"sd_model_checkpoint": "../../etc/passwd"}), 404)
    body = _error_shape(_post(server, API + "/img2img", {"init_images": ["%%%not base64"], "steps": 2}), 422)
    assert body["detail"] == "Invalid encoded image"
    _error_shape(_txt2img(server, restore_faces=True), 422)
    _error_shape(_txt2img(server, script_name="X/Y/Z plot"), 422)
    assert _get(server, "/system_stats").status_code == 200  # still serving


def test_options_round_trip_and_persist(server):
    before = _ok(_get(server, API + "/options"))
    assert before["sd_model_checkpoint"] and before["samples_format"] == "png"
    try:
        assert _post(server, API + "/options", {"CLIP_stop_at_last_layers": 2, "samples_format": "jpg"}).status_code == 200
        after = _ok(_get(server, API + "/options"))
        assert after["CLIP_stop_at_last_layers"] == 2 and after["samples_format"] == "jpg"
        stored = server.base_dir / "user" / "default" / "diffusers_studio" / "a1111_options.json"
        assert json.loads(stored.read_text())["CLIP_stop_at_last_layers"] == 2
        result = _ok(_txt2img(server, seed=41))
        assert _decode(result["images"][0]).format == "JPEG"
        assert "Clip skip: 2" in json.loads(result["info"])["infotexts"][0]
        _error_shape(_post(server, API + "/options", {"sd_model_checkpoint": "missing"}), 404)
        _error_shape(_post(server, API + "/options", {"CLIP_stop_at_last_layers": "two"}), 422)
    finally:
        _post(server, API + "/options", {"CLIP_stop_at_last_layers": 1, "samples_format": "png"})


def test_listings(server):
    titles = [m["title"] for m in _ok(_get(server, API + "/sd-models"))]
    for name in (SD15_CHECKPOINT, SDXL_CHECKPOINT, SD15_DIFFUSERS):
        assert name in titles
    names = [s["name"] for s in _ok(_get(server, API + "/samplers"))]
    assert "Euler a" in names and "DPM++ 2M" in names
    labels = [s["label"] for s in _ok(_get(server, API + "/schedulers"))]
    assert "Karras" in labels
    assert any(u["name"] == "Lanczos" for u in _ok(_get(server, API + "/upscalers")))
    assert isinstance(_ok(_get(server, API + "/loras")), list)
    assert _ok(_get(server, API + "/sd-vae")) == []


def test_openapi_document_parses(server):
    document = _ok(_get(server, "/sdapi/docs/openapi.json"))
    assert document["openapi"].startswith("3.")
    assert "/sdapi/v1/txt2img" in document["paths"] and "/sdapi/v1/options" in document["paths"]
    schema = document["components"]["schemas"]["StableDiffusionTxt2ImgProcessingAPI"]
    assert schema["properties"]["steps"]["default"] == 50


def test_interrupt_stops_a_long_run_and_progress_reports_it(server):
    answer: dict = {}

    def run():
        answer["response"] = _txt2img(server, seed=61, steps=2000, n_iter=2)

    thread = threading.Thread(target=run)
    thread.start()
    seen = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = _ok(_get(server, API + "/progress"))
        if progress["state"]["sampling_step"] >= 1:
            seen = progress
            break
        time.sleep(0.2)
    assert seen is not None, "progress never reported a sampling step"
    assert seen["state"]["job_count"] == 2 and seen["state"]["sampling_steps"] == 2000
    assert 0 < seen["progress"] < 1
    assert _post(server, API + "/interrupt", {}).status_code == 200
    thread.join(timeout=120)
    assert not thread.is_alive(), "txt2img did not return after the interrupt"
    result = _ok(answer["response"])
    assert result["images"] == []  # both batches stopped
    assert _ok(_get(server, API + "/progress"))["state"]["job_count"] == 0
    assert len(_ok(_txt2img(server, seed=62))["images"]) == 1
