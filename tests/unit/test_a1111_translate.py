"""The A1111 request -> graph translation for masks, ControlNet units and LoRA tags (no server, no models).

The pack's `nodes/` folder is loaded as a bare package (its `__init__` needs
ComfyUI; `a1111.translate` and `a1111.extras` do not).
"""
from __future__ import annotations

import base64
import importlib
import io
import types

import pytest
from PIL import Image

from harness.a1111_pack import PKG as _PKG
from harness.a1111_pack import a1111_module

translate = a1111_module("translate")
extras = a1111_module("extras")
errors = a1111_module("errors")
models = a1111_module("models")

NODE_TYPES = ["DSInpaint", "DSInpaintComposite", "DSInpaintCropToMask", "DSInpaintPasteBack", "DSLoadLoRA",
              "DSLoadControlNet", "DSApplyControlNet", "DSCannyEdges", "DSLineArtThreshold"]
CANNY = "control_v11p_sd15_canny.safetensors"
LORA = "styles/ink.safetensors"


def _catalog(stored: list) -> "translate.Catalog":
    def store(png: bytes) -> str:
        stored.append(Image.open(io.BytesIO(png)))
        return f"img{len(stored)}.png"

    return translate.Catalog(models=["m.safetensors"], node_types=NODE_TYPES, store_image=store,
                             loras=[LORA], controlnets=[CANNY])


def _b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _plan(kind: str, stored=None, **fields):
    body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 1, **fields}
    cls = models.Txt2ImgRequest if kind == "txt2img" else models.Img2ImgRequest
    return translate.build_plan(cls.model_validate(body), kind, {}, _catalog([] if stored is None else stored))


def _by_class(graph: dict, class_type: str) -> list[dict]:
    return [node["inputs"] for node in graph.values() if node["class_type"] == class_type]


@pytest.mark.parametrize("fill, expected", [(0, "blurred"), (1, "original"), (2, "noise"), (3, "nothing")])
def test_inpainting_fill_maps_to_dsinpaint(fill, expected):
    picture = Image.new("RGB", (64, 64), "gray")
    mask = Image.new("L", (64, 64), 0)
    plan = _plan("img2img", init_images=[_b64(picture)], mask=_b64(mask), inpainting_fill=fill, mask_blur=3,
                 inpaint_full_res=False)
    graph = plan.graphs[0]
    (inpaint,) = _by_class(graph, "DSInpaint")
    assert inpaint["fill"] == expected and inpaint["blur"] == 3.0
    assert _by_class(graph, "DSInpaintComposite") and not _by_class(graph, "DSVAEEncode")
    assert _by_class(graph, "LoadImageMask")[0]["channel"] == "red"


def test_full_res_crops_and_pastes_back_and_invert_flips_the_mask():
    stored: list = []
    picture = Image.new("RGB", (80, 48), "gray")
    mask = Image.new("RGBA", (80, 48), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (10, 10, 20, 20))
    plan = _plan("img2img", stored, init_images=[_b64(picture)], mask=_b64(mask), inpainting_mask_invert=1,
                 inpaint_full_res=True, inpaint_full_res_padding=16)
    graph = plan.graphs[0]
    (crop,) = _by_class(graph, "DSInpaintCropToMask")
    assert (crop["padding"], crop["width"], crop["height"]) == (16, 64, 64)
    assert _by_class(graph, "DSInpaintPasteBack") and not _by_class(graph, "DSInpaintComposite")
    stored_mask = stored[0].convert("L")
    assert stored_mask.size == (80, 48)  # the picture keeps its size
    assert stored_mask.getpixel((15, 15)) == 0 and stored_mask.getpixel((50, 30)) == 255  # alpha, inverted
    assert "Inpaint area: Only masked" in plan.infotexts[0]


def test_controlnet_units_chain_on_the_prompts():
    unit = {"image": _b64(Image.new("RGB", (32, 32), "white")), "module": "canny",
            "model": "control_v11p_sd15_canny [d14c016b]", "weight": 0.8, "guidance_start": 0.1,
            "guidance_end": 0.9, "threshold_a": 30, "threshold_b": 120}
    second = {**unit, "module": "invert (from white bg & black line)", "control_mode": 2}
    plan = _plan("txt2img", alwayson_scripts={"controlnet": {"args": [unit, {"enabled": False}, second]}})
    graph = plan.graphs[0]
    applied = _by_class(graph, "DSApplyControlNet")
    assert len(applied) == 2
    assert (applied[0]["strength"], applied[0]["start_percent"], applied[0]["end_percent"],
            applied[0]["guess_mode"]) == (0.8, 0.1, 0.9, False)
    assert applied[1]["guess_mode"] is True and applied[1]["positive"][0] != applied[0]["positive"][0]
    assert _by_class(graph, "DSCannyEdges")[0] == {**_by_class(graph, "DSCannyEdges")[0], "low_threshold": 30,
                                                   "high_threshold": 120}
    assert _by_class(graph, "DSLineArtThreshold")[0]["lines_are_dark"] is True
    assert {n["control_net_name"] for n in _by_class(graph, "DSLoadControlNet")} == {CANNY}
    (sampler,) = _by_class(graph, "DSSampler")
    last = [node_id for node_id, node in graph.items() if node["class_type"] == "DSApplyControlNet"][-1]
    assert sampler["positive"] == [last, 0] and sampler["negative"] == [last, 1]


@pytest.mark.parametrize("unit, status", [({"control_mode": 1}, 422), ({"model": "nope"}, 404),
                                          ({"module": "depth_midas"}, 422), ({"guidance_start": 1.0}, 422)])
def test_controlnet_refusals(unit, status):
    base = {"image": _b64(Image.new("RGB", (8, 8))), "module": "none", "model": CANNY}
    with pytest.raises(errors.ApiError) as caught:
        _plan("txt2img", alwayson_scripts={"controlnet": {"args": [{**base, **unit}]}})
    assert caught.value.status == status


def test_lora_tags_become_a_chain_and_leave_the_encoded_text():
    plan = _plan("txt2img", prompt="a cat <lora:ink:0.6> in the rain <lora:styles/ink.safetensors:0.5:1.2>")
    graph = plan.graphs[0]
    loras = _by_class(graph, "DSLoadLoRA")
    assert [(n["lora_name"], n["strength_text_encoder"], n["strength_model"]) for n in loras] == [
        (LORA, 0.6, 0.6), (LORA, 0.5, 1.2)]
    texts = [n["text"] for n in _by_class(graph, "DSTextEncode")]
    assert "lora" not in " ".join(texts) and "a cat  in the rain " in texts
    assert plan.info["prompt"].startswith("a cat <lora:ink:0.6>")


def test_lora_named_weights_and_unknown_lora():
    assert translate.strip_lora_tags("x <lora:a:te=0.2:unet=0.9:dyn=4>") == ("x ", [("a", 0.2, 0.9)])
    with pytest.raises(errors.ApiError) as caught:
        _plan("txt2img", prompt="<lora:missing:1>")
    assert caught.value.status == 404 and "missing" in str(caught.value.detail)
    plan = _plan("txt2img", prompt="<lora:missing:1>", disable_extra_networks=True)
    assert not _by_class(plan.graphs[0], "DSLoadLoRA")


def _refiner_plan(options: dict, refiner_family=("sdxl", "refiner"), **fields):
    body = {"prompt": "a cat", "steps": 10, "width": 64, "height": 64, "seed": 1,
            "refiner_checkpoint": "refiner.safetensors", "refiner_switch_at": 0.8, **fields}
    families = importlib.import_module(f"{_PKG}.engine.families")
    kinds = {"m.safetensors": families.get("sdxl"), "refiner.safetensors": families.get(*refiner_family)}
    catalog = translate.Catalog(models=["m.safetensors", "refiner.safetensors"], node_types=NODE_TYPES,
                                store_image=lambda png: "x.png", model_family=kinds.get)
    return translate.build_plan(models.Txt2ImgRequest.model_validate(body), "txt2img", options, catalog)


def _refiner_scores(plan) -> tuple:
    """(positive, negative) aesthetic scores on the refiner sampler's prompts."""
    graph = plan.graphs[0]
    refiner = [node for node in graph.values() if node["class_type"] == "DSSampler"][1]["inputs"]
    scores = []
    for side in ("positive", "negative"):
        node = graph[refiner[side][0]]
        assert node["class_type"] == "DSSDXLAestheticScore" and graph[node["inputs"]["conditioning"][0]][
            "class_type"] == "DSTextEncode"
        scores.append(node["inputs"]["aesthetic_score"])
    return tuple(scores)


def test_refiner_pass_takes_the_aesthetic_score_options():
    plan = _refiner_plan({})
    samplers = _by_class(plan.graphs[0], "DSSampler")
    assert len(samplers) == 2 and not [k for s in samplers for k in s if "aesthetic" in k]  # widgets every model uses
    assert len(_by_class(plan.graphs[0], "DSSDXLAestheticScore")) == 2  # the refiner's prompts only
    assert _refiner_scores(plan) == (6.0, 2.5)  # A1111's defaults

    stored = {"sdxl_refiner_high_aesthetic_score": 7.5, "sdxl_refiner_low_aesthetic_score": 1.0}
    assert _refiner_scores(_refiner_plan(stored)) == (7.5, 1.0)

    overridden = _refiner_plan(stored, override_settings={"sdxl_refiner_low_aesthetic_score": 3})
    assert _refiner_scores(overridden) == (7.5, 3.0)


def test_a_refiner_checkpoint_that_takes_no_score_gets_none():
    """A1111 lets any checkpoint refine; only the SDXL refiner takes the aesthetic-score options."""
    for family in (("sdxl", "base"), ("sd1", "base")):
        plan = _refiner_plan({"sdxl_refiner_high_aesthetic_score": 9.0}, refiner_family=family)
        assert not _by_class(plan.graphs[0], "DSSDXLAestheticScore")
        assert len(_by_class(plan.graphs[0], "DSSampler")) == 2


def test_a_bad_aesthetic_score_override_is_named():
    with pytest.raises(errors.ApiError, match=r"sdxl_refiner_high_aesthetic_score: must be a number from 0 to 1000"):
        _refiner_plan({}, override_settings={"sdxl_refiner_high_aesthetic_score": "high"})


def test_prompt_editing_is_scheduled_anew_for_the_hires_pass():
    plain = _plan("txt2img", prompt="a cat", enable_hr=True, hr_scale=1.5)
    assert len(_by_class(plain.graphs[0], "DSTextEncode")) == 2  # the hires pass reuses the encodes
    plan = _plan("txt2img", prompt="a [cat:dog:0.5]", negative_prompt="blurry", enable_hr=True, hr_scale=1.5)
    encodes = _by_class(plan.graphs[0], "DSTextEncode")
    assert [(n["text"], n.get("first_pass_steps")) for n in encodes] == [
        ("a [cat:dog:0.5]", None), ("blurry", None), ("a [cat:dog:0.5]", 4), ("blurry", None)]
    assert not any("old_prompt_editing_timelines" in n for n in encodes)
    assert "Old prompt editing" not in plan.infotexts[0]


def test_old_prompt_editing_timelines_option():
    plan = _plan("txt2img", prompt="a [cat:dog:1.5]", override_settings={"use_old_scheduling": True})
    encodes = _by_class(plan.graphs[0], "DSTextEncode")
    assert encodes[0]["old_prompt_editing_timelines"] is True and "old_prompt_editing_timelines" not in encodes[1]
    assert "Old prompt editing timelines: True" in plan.infotexts[0]
    with pytest.raises(errors.ApiError) as caught:
        _plan("txt2img", override_settings={"use_old_scheduling": "yes"})
    assert caught.value.status == 422 and "use_old_scheduling" in str(caught.value.detail)


def test_listings_in_a1111_shapes():
    listings = importlib.import_module(f"{_PKG}.a1111.listings")
    assert listings.face_restorers(["codeformer-v0.1.0.pth", "GFPGANv1.4.pth"]) == [
        {"name": "CodeFormer", "cmd_dir": "models/facerestore_models/codeformer-v0.1.0.pth"},
        {"name": "GFPGAN", "cmd_dir": "models/facerestore_models/GFPGANv1.4.pth"}]
    assert listings.realesrgan_models(["RealESRGAN_x2plus.pth", "4x-UltraSharp.pth", "x/realesr-general-x4v3.pth"]) \
        == [{"name": "RealESRGAN_x2plus", "path": "RealESRGAN_x2plus.pth", "scale": 2},
            {"name": "realesr-general-x4v3", "path": "x/realesr-general-x4v3.pth", "scale": 4}]
    flags = listings.cmd_flags(types.SimpleNamespace(listen="0.0.0.0", port=8190, cpu=True),
                               lambda folder: [f"/models/{folder}"])
    assert flags["api"] is True and flags["listen"] is True and flags["port"] == 8190
    assert flags["embeddings_dir"] == "/models/embeddings" and flags["hypernetwork_dir"] is None


@pytest.mark.parametrize("files, needle", [([], "models/facerestore_models"), (["GFPGANv1.4.pth"], "facexlib")])
def test_restore_faces_is_a_422_that_says_what_to_install(files, needle):
    catalog = _catalog([])
    catalog.face_restorers = files
    with pytest.raises(errors.ApiError) as caught:
        translate.build_plan(models.Txt2ImgRequest.model_validate({"prompt": "x", "restore_faces": True}),
                             "txt2img", {}, catalog)
    assert caught.value.status == 422 and needle in caught.value.detail and "restore_faces" in caught.value.detail


def test_styles_merge_as_a1111_and_an_unknown_style_is_named():
    styles = importlib.import_module(f"{_PKG}.a1111.styles")
    table = styles.parse_styles(
        "name,prompt,negative_prompt\n"
        "Cinematic,\"cinematic still of {prompt}, film grain\",\"cartoon, drawing\"\n"
        "Sharp,sharp focus,\n"
        ",skipped,row\n")
    assert sorted(table) == ["Cinematic", "Sharp"]
    catalog = _catalog([])
    catalog.styles = table
    plan = translate.build_plan(models.Txt2ImgRequest.model_validate(
        {"prompt": "a cat", "negative_prompt": "blurry", "styles": ["Cinematic", "Sharp"], "steps": 2}),
        "txt2img", {}, catalog)
    texts = [n["text"] for n in _by_class(plan.graphs[0], "DSTextEncode")]
    assert texts == ["cinematic still of a cat, film grain, sharp focus", "blurry, cartoon, drawing"]
    assert plan.info["prompt"] == "a cat" and plan.info["all_prompts"] == [texts[0]]
    assert plan.info["styles"] == ["Cinematic", "Sharp"] and plan.infotexts[0].startswith(texts[0] + "\n")
    with pytest.raises(errors.ApiError) as caught:
        translate.build_plan(models.Txt2ImgRequest.model_validate({"prompt": "x", "styles": ["Nope"]}),
                             "txt2img", {}, catalog)
    assert caught.value.status == 422 and "'Nope'" in caught.value.detail and "Cinematic" in caught.value.detail
