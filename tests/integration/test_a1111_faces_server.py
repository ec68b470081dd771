"""A1111 `restore_faces` through the real server: DSRestoreFaces on the demo SD1.5 checkpoint.

The models folder gets a tiny RestoreFormer (random weights, loaded by spandrel) and a
RetinaFace detector whose weights make it report one face at a known place
(tests/face_models.py); a random CodeFormer joins for code_former_weight. With the same
seed, the picture with `restore_faces: true` equals the one without outside that face and
differs inside it. Without the detector, the 422 names the missing file and its folder.
The files are removed after, so the other A1111 tests see a server without face models.
"""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from safetensors.torch import save_file

from face_models import codeformer_state_dict, face_landmarks, one_face_detector, tiny_restoreformer_state_dict
from harness.models import SD15_CHECKPOINT

pytestmark = pytest.mark.integration

API = "/sdapi/v1"
SIDE = 64
FACE = (32, 30)  # the face's centre (x, y); eyes 8 pixels apart
BODY = {"prompt": "a portrait", "negative_prompt": "", "steps": 3, "width": SIDE, "height": SIDE, "seed": 7,
        "sampler_name": "Euler", "cfg_scale": 5, "override_settings": {"sd_model_checkpoint": SD15_CHECKPOINT}}


@pytest.fixture
def server(idle_comfy, comfy_server):
    return comfy_server


@pytest.fixture
def face_files(server):
    models = server.base_dir / "models"
    restorer = models / "facerestore_models" / "RestoreFormer-tiny.safetensors"
    detector = models / "facedetection" / "detection_mobilenet0.25_Final.safetensors"
    restorer.parent.mkdir(parents=True, exist_ok=True)
    detector.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_restoreformer_state_dict(), str(restorer))
    save_file(one_face_detector(face_landmarks(*FACE, 8), (SIDE, SIDE)).state_dict(), str(detector))
    try:
        yield restorer, detector
    finally:
        restorer.unlink(missing_ok=True)
        detector.unlink(missing_ok=True)


def _post(server, path, body):
    return requests.post(server.url + API + path, json=body, timeout=300)


def _picture(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:3000]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _init_image() -> str:
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    array = np.stack([x * 3 % 256, y * 5 % 256, (x + y) * 2 % 256], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_restore_faces_changes_the_face_and_nothing_else(server, face_files, kind):
    body = dict(BODY)
    if kind == "img2img":
        body.update(init_images=[_init_image()], denoising_strength=0.6)
    plain = _picture(_post(server, f"/{kind}", {**body, "restore_faces": False}))
    response = _post(server, f"/{kind}", {**body, "restore_faces": True})
    restored = _picture(response)
    changed = np.abs(restored - plain).max(axis=-1) > 0
    x, y = FACE
    assert changed[y - 6:y + 6, x - 6:x + 6].mean() > 0.8, "the face is restored"
    # the crop covers about +-16 pixels around the face; everything beyond is the sampler's picture
    assert not changed[:8].any() and not changed[:, :12].any() and not changed[:, 52:].any()
    assert not changed[52:].any()
    info = json.loads(response.json()["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] == "RestoreFormer"
    assert "Face restoration: RestoreFormer" in info["infotexts"][0]


def test_restore_faces_without_a_detector_names_it(server, face_files):
    _restorer, detector = face_files
    detector.unlink()
    response = _post(server, "/txt2img", {**BODY, "restore_faces": True})
    assert response.status_code == 422, response.text[:2000]
    detail = response.json()["detail"]
    assert "models/facedetection" in detail and "detection_Resnet50_Final.pth" in detail
    assert "RestoreFormer found" in detail
    listed = requests.get(server.url + API + "/face-restorers", timeout=30).json()
    assert {"name": "RestoreFormer", "cmd_dir": "models/facerestore_models/RestoreFormer-tiny.safetensors"} in listed


def test_codeformer_weight_reaches_codeformer(server, face_files):
    """A1111's default restorer is CodeFormer; with its file present (the released .pth layout,
    weights under params_ema) code_former_weight 0 and 1 restore the same face differently."""
    codeformer = face_files[0].parent / "codeformer-v0.1.0.pth"
    torch.save({"params_ema": codeformer_state_dict()}, codeformer)
    try:
        pictures = []
        for weight in (0.0, 1.0):
            settings = {**BODY["override_settings"], "face_restoration_model": "CodeFormer",
                        "code_former_weight": weight}
            response = _post(server, "/txt2img", {**BODY, "restore_faces": True, "override_settings": settings})
            pictures.append(_picture(response))
            info = json.loads(response.json()["info"])
            assert info["face_restoration_model"] == "CodeFormer", info
        plain = _picture(_post(server, "/txt2img", {**BODY, "restore_faces": False}))
        x, y = FACE
        for picture in pictures:
            changed = np.abs(picture - plain).max(axis=-1) > 0
            assert changed[y - 6:y + 6, x - 6:x + 6].mean() > 0.8 and not changed[:8].any()
        assert np.abs(pictures[0] - pictures[1]).max() > 0, "code_former_weight made no difference"
    finally:
        codeformer.unlink(missing_ok=True)
