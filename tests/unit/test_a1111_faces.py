"""A1111 `restore_faces` -> DSRestoreFaces in the graph, or a 422 naming what to install (no server, no models)."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from harness.a1111_pack import a1111_module

translate = a1111_module("translate")
errors = a1111_module("errors")
models = a1111_module("models")
listings = a1111_module("listings")

NODE_TYPES = ["DSRestoreFaces", "DSInpaint", "DSInpaintComposite", "DSSDUpscale"]
RESTORERS = ["GFPGANv1.4.pth", "RestoreFormer.pth"]
DETECTORS = ["detection_mobilenet0.25_Final.pth", "detection_Resnet50_Final.pth"]


def _plan(kind="txt2img", restorers=RESTORERS, detectors=DETECTORS, options=None, node_types=NODE_TYPES, **fields):
    def store(png: bytes) -> str:
        return f"img{len(png)}.png"

    catalog = translate.Catalog(models=["m.safetensors"], node_types=node_types, store_image=store,
                                face_restorers=list(restorers), face_detectors=list(detectors))
    body = {"prompt": "a portrait", "steps": 4, "width": 64, "height": 64, "seed": 1, "restore_faces": True, **fields}
    cls = models.Txt2ImgRequest if kind == "txt2img" else models.Img2ImgRequest
    return translate.build_plan(cls.model_validate(body), kind, options or {}, catalog)


def _node(graph: dict, class_type: str) -> tuple[str, dict]:
    (found,) = [(nid, node["inputs"]) for nid, node in graph.items() if node["class_type"] == class_type]
    return found


def _refusal(**kwargs) -> str:
    with pytest.raises(errors.ApiError) as caught:
        _plan(**kwargs)
    assert caught.value.status == 422
    return caught.value.detail


def test_missing_files_are_named_with_their_folders():
    both = _refusal(restorers=[], detectors=[])
    assert "models/facerestore_models" in both and "models/facedetection" in both and "restore_faces false" in both
    detector = _refusal(detectors=[])
    assert "detection_Resnet50_Final.pth" in detector and "models/facedetection" in detector
    assert "GFPGAN, RestoreFormer found" in detector and "needs a face-restoration model" not in detector
    restorer = _refusal(restorers=[])
    assert "models/facerestore_models" in restorer and "face detector" not in restorer
    assert listings.restore_faces_refusal(RESTORERS, DETECTORS) is None


def test_restore_faces_runs_dsrestorefaces_between_decode_and_save():
    plan = _plan()
    graph = plan.graphs[0]
    node_id, faces = _node(graph, "DSRestoreFaces")
    decode_id, _ = _node(graph, "DSVAEDecode")
    assert faces["image"] == [decode_id, 0]
    assert _node(graph, "PreviewImage")[1]["images"] == [node_id, 0]
    # A1111's defaults: CodeFormer is not here, so the first restorer; facexlib's ResNet-50 detector
    assert faces["restorer_name"] == "GFPGANv1.4.pth" and faces["detector_name"] == "detection_Resnet50_Final.pth"
    assert faces["codeformer_weight"] == 0.5 and faces["visibility"] == 1.0 and faces["detection_size"] == 640
    assert "Face restoration: GFPGAN" in plan.infotexts[0]
    assert plan.info["restore_faces"] is True and plan.info["face_restoration_model"] == "GFPGAN"
    assert "DSRestoreFaces" not in str(_plan(restore_faces=False).graphs[0])


def test_face_restoration_options_pick_the_model_and_weight():
    faces = _node(_plan(options={"face_restoration_model": "RestoreFormer", "code_former_weight": 0.8}).graphs[0],
                  "DSRestoreFaces")[1]
    assert faces["restorer_name"] == "RestoreFormer.pth" and faces["codeformer_weight"] == 0.8
    overridden = _plan(options={"face_restoration_model": "RestoreFormer"},
                       override_settings={"face_restoration_model": "GFPGANv1.4.pth", "code_former_weight": 0.1})
    faces = _node(overridden.graphs[0], "DSRestoreFaces")[1]
    assert faces["restorer_name"] == "GFPGANv1.4.pth" and faces["codeformer_weight"] == 0.1
    absent = _refusal(override_settings={"face_restoration_model": "CodeFormer v2"})
    assert "'CodeFormer v2'" in absent and "GFPGAN (GFPGANv1.4.pth)" in absent
    assert "code_former_weight" in _refusal(override_settings={"code_former_weight": 3})
    assert "DSRestoreFaces" in _refusal(node_types=["DSInpaint"])


def test_inpainting_restores_faces_before_the_composite_and_sd_upscale_after_its_tiles():
    picture = Image.new("RGB", (64, 64), "gray")
    out = io.BytesIO()
    picture.save(out, format="PNG")
    image = base64.b64encode(out.getvalue()).decode()
    graph = _plan("img2img", init_images=[image], mask=image, inpaint_full_res=False).graphs[0]
    faces_id, _ = _node(graph, "DSRestoreFaces")
    assert _node(graph, "DSInpaintComposite")[1]["generated"] == [faces_id, 0]
    upscaled = _plan("img2img", init_images=[image], script_name="SD upscale", script_args=["", 8, "Lanczos", 2.0],
                     denoising_strength=0.3).graphs[0]
    upscale_id, _ = _node(upscaled, "DSSDUpscale")
    faces_id, faces = _node(upscaled, "DSRestoreFaces")
    assert faces["image"] == [upscale_id, 0] and _node(upscaled, "PreviewImage")[1]["images"] == [faces_id, 0]


def test_face_restoration_in_the_infotext_follows_the_seed_and_reads_back():
    infotext = a1111_module("infotext")
    text = _plan(seed=5).infotexts[0]
    assert "Seed: 5, Face restoration: GFPGAN, Size: 64x64" in text
    fields = infotext.request_fields_from_infotext(text, models.Txt2ImgRequest.model_fields)
    assert fields["restore_faces"] is True and fields["override_settings"]["face_restoration_model"] == "GFPGAN"
    plain = infotext.request_fields_from_infotext(_plan(restore_faces=False).infotexts[0],
                                                  models.Txt2ImgRequest.model_fields)
    assert "restore_faces" not in plain


def test_codeformer_without_its_loader_falls_back_or_says_what_to_install():
    files = ["codeformer-v0.1.0.pth", "GFPGANv1.4.pth"]

    def plan(restorers, **fields):
        catalog = translate.Catalog(models=["m.safetensors"], node_types=NODE_TYPES, face_restorers=restorers,
                                    face_detectors=DETECTORS, codeformer_available=False)
        body = {"prompt": "a portrait", "steps": 4, "width": 64, "height": 64, "restore_faces": True, **fields}
        return translate.build_plan(models.Txt2ImgRequest.model_validate(body), "txt2img", {}, catalog)

    assert _node(plan(files).graphs[0], "DSRestoreFaces")[1]["restorer_name"] == "GFPGANv1.4.pth"
    with pytest.raises(errors.ApiError) as caught:
        plan(files[:1])
    assert caught.value.status == 422 and "spandrel_extra_arches" in caught.value.detail
    available = _plan(restorers=files)  # with the loader, A1111's default CodeFormer is used
    assert _node(available.graphs[0], "DSRestoreFaces")[1]["restorer_name"] == "codeformer-v0.1.0.pth"


def test_the_face_restoration_option_applies_when_the_request_leaves_restore_faces_out():
    body = {"prompt": "a portrait", "steps": 4, "width": 64, "height": 64}
    catalog = translate.Catalog(models=["m.safetensors"], node_types=NODE_TYPES, face_restorers=RESTORERS,
                                face_detectors=DETECTORS)

    def plan(options, **fields):
        return translate.build_plan(models.Txt2ImgRequest.model_validate({**body, **fields}), "txt2img", options,
                                    catalog)

    assert plan({"face_restoration": True}).info["restore_faces"] is True
    assert plan({"face_restoration": True}, restore_faces=False).info["restore_faces"] is False
    assert plan({}).info["restore_faces"] is False
    assert plan({}, override_settings={"face_restoration": True}).info["face_restoration_model"] == "GFPGAN"


def test_the_detector_is_facexlibs_resnet50_and_safetensors_first():
    assert listings.pick_detector(DETECTORS) == "detection_Resnet50_Final.pth"
    assert listings.pick_detector([*DETECTORS, "detection_Resnet50_Final.safetensors"]) == \
        "detection_Resnet50_Final.safetensors"
    assert listings.pick_detector(["b.pth", "a.pth"]) == "a.pth"
