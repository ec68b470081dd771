"""Concurrent A1111 requests from several client threads are all answered.

Each request is a prompt on ComfyUI's one queue, so they run one after the
other; none may be lost, mixed up or answered with another's images. Each
thread asks for its own seed and checks that the answer says that seed and
that its picture equals the same request made alone.
"""
from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from harness.models import SD15_CHECKPOINT

pytestmark = pytest.mark.integration

THREADS = 4


def _txt2img(url: str, seed: int) -> dict:
    body = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
            "seed": seed, "override_settings": {"sd_model_checkpoint": SD15_CHECKPOINT}}
    response = requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text[:2000]
    return response.json()


def _pixels(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"))


def test_concurrent_requests_are_all_answered_in_full(idle_comfy, comfy_server):
    seeds = [4100 + i for i in range(THREADS)]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        answers = list(pool.map(lambda s: _txt2img(comfy_server.url, s), seeds))
    assert [json.loads(a["info"])["seed"] for a in answers] == seeds
    assert all(len(a["images"]) == 1 for a in answers)
    alone = _txt2img(comfy_server.url, seeds[-1])
    assert np.array_equal(_pixels(answers[-1]), _pixels(alone))
    assert not np.array_equal(_pixels(answers[0]), _pixels(answers[1]))
