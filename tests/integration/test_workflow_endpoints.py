"""Saved workflows as named-input endpoints (/diffusers_studio/workflows) on the real server."""
from __future__ import annotations

import base64
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "example_workflows"
BASE = "/diffusers_studio/workflows"
USER_FLOW = "ds_test_img2img"


@pytest.fixture
def server(idle_comfy, comfy_server):
    return comfy_server


@pytest.fixture
def user_flow(server):
    """img2img.json saved in the user's workflows folder, with titles on the picture and the sampler."""
    workflow = copy.deepcopy(json.loads((EXAMPLES / "img2img.json").read_text(encoding="utf-8")))
    for node in workflow["nodes"]:
        if node["type"] == "LoadImage":
            node["title"] = "Picture"
        elif node["type"] == "DSSampler":
            node["title"] = "Sampler"
    folder = Path(server.base_dir) / "user" / "default" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{USER_FLOW}.json"
    path.write_text(json.dumps(workflow), encoding="utf-8")
    yield USER_FLOW
    path.unlink(missing_ok=True)


def _b64_picture(w=64, h=64) -> str:
    y, x = np.mgrid[0:h, 0:w]
    picture = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_listing_has_examples_and_user_workflows(server, user_flow):
    listing = requests.get(server.url + BASE, timeout=60).json()["workflows"]
    by_name = {entry["name"]: entry for entry in listing}
    assert "txt2img_sd15" in by_name and by_name["txt2img_sd15"]["source"] == "example"
    inputs = by_name["txt2img_sd15"]["inputs"]
    assert inputs["Positive prompt"]["type"] == "STRING" and "Positive prompt.clip_skip" in inputs
    mine = by_name[user_flow]
    assert mine["source"] == "user"
    assert mine["inputs"]["Picture"]["type"] == "IMAGE"
    assert mine["inputs"]["Sampler"]["default"] == 123456789  # the sampler's main widget is its seed
    assert mine["inputs"]["Sampler.sampler_name"]["type"] == "COMBO"
    assert "Euler a" in mine["inputs"]["Sampler.sampler_name"]["options"]
    assert mine["inputs"]["Sampler.steps"]["min"] == 1
    one = requests.get(server.url + f"/ds/workflows/{user_flow}", timeout=60).json()
    assert one["inputs"] == mine["inputs"]


def test_run_with_named_inputs(server, user_flow):
    body = {"Picture": _b64_picture(), "Positive prompt": "a watercolour", "Sampler": 7, "Sampler.steps": 2}
    response = requests.post(server.url + f"{BASE}/{user_flow}", json=body, timeout=180)
    assert response.status_code == 200, response.text[:2000]
    answer = response.json()
    assert answer["prompt_id"] and len(answer["images"]) == 1
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.format == "PNG" and image.size == (64, 64)
    history = requests.get(server.url + f"/history/{answer['prompt_id']}", timeout=30).json()
    prompt = history[answer["prompt_id"]]["prompt"][2]
    sampler = next(node for node in prompt.values() if node["class_type"] == "DSSampler")
    assert sampler["inputs"]["seed"] == 7 and sampler["inputs"]["steps"] == 2
    again = requests.post(server.url + f"/ds/workflows/{user_flow}/run",
                          json={"inputs": {"Picture": _b64_picture(), "Sampler.steps": 1}}, timeout=180)
    assert again.status_code == 200, again.text[:2000]


@pytest.mark.parametrize("body", [
    {"No such input": 1},
    {"Sampler.steps": "many"},
    {"Sampler.steps": 0},
    {"Sampler.sampler_name": "Nonexistent sampler"},
    {"Picture": "not an image"},
])
def test_bad_inputs_are_422(server, user_flow, body):
    response = requests.post(server.url + f"{BASE}/{user_flow}", json=body, timeout=60)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("name", ["..%2F..%2Fcomfyui.log", "%2E%2E", "no_such_workflow", "..%5Cx"])
def test_names_only_from_the_folders(server, name):
    assert requests.get(server.url + f"{BASE}/{name}", timeout=30).status_code == 404
    assert requests.post(server.url + f"{BASE}/{name}", json={}, timeout=30).status_code == 404
