"""A1111 requests naming an SD3 or Flux checkpoint: the graph they become, or a 422 naming the field.

The pack's `nodes/` folder is loaded as a bare package, as in test_a1111_translate.
"""
from __future__ import annotations

import pytest

from bare_pack import module

translate = module("a1111.translate")
errors = module("a1111.errors")
models = module("a1111.models")
families = module("engine.families")

KINDS = {"flux-dev": ("flux", "dev"), "flux-schnell": ("flux", "schnell"), "sd3": ("sd3", "base"),
         "sd15.safetensors": ("sd1", "base")}


def _plan(model: str, **fields):
    body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 1, "cfg_scale": 1.0,
            "override_settings": {"sd_model_checkpoint": model}, **fields}
    catalog = translate.Catalog(models=list(KINDS), node_types=["DSLoadLoRA", "DSInpaint", "DSInpaintComposite"],
                                store_image=lambda png: "x.png", loras=["ink.safetensors"],
                                model_family=lambda name: families.get(*KINDS[name]))
    return translate.build_plan(models.Txt2ImgRequest.model_validate(body), "txt2img", {}, catalog)


def _of(graph: dict, class_type: str) -> list[dict]:
    return [node["inputs"] for node in graph.values() if node["class_type"] == class_type]


def test_flux_dev_txt2img_carries_distilled_guidance():
    plan = _plan("flux-dev", distilled_cfg_scale=2.5)
    graph = plan.graphs[0]
    assert _of(graph, "EmptySD3LatentImage") and not _of(graph, "EmptyLatentImage")
    (guidance,) = _of(graph, "DSFluxGuidance")
    assert guidance["guidance"] == 2.5
    sampler = _of(graph, "DSSampler")[0]
    assert graph[sampler["positive"][0]]["class_type"] == "DSFluxGuidance"
    assert "Distilled CFG Scale: 2.5" in plan.infotexts[0]


def test_flux_schnell_and_sd3_have_no_guidance_node():
    for model in ("flux-schnell", "sd3"):
        graph = _plan(model, distilled_cfg_scale=3.5).graphs[0]
        assert not _of(graph, "DSFluxGuidance") and _of(graph, "EmptySD3LatentImage")
    assert _of(_plan("sd15.safetensors").graphs[0], "EmptyLatentImage")


def test_non_flow_sampler_refused_by_name():
    with pytest.raises(errors.ApiError) as caught:
        _plan("sd3", sampler_name="DPM++ 2M")
    assert caught.value.status == 422 and "sampler_name" in str(caught.value.detail)
    assert "Euler" in str(caught.value.detail)


@pytest.mark.parametrize("model", ["flux-dev", "sd3"])
def test_lora_tags_become_lora_nodes_for_dit(model):
    """<lora:name:w> on SD3 / Flux: a DSLoadLoRA between the loader and the encoder, the tag out of the prompt."""
    graph = _plan(model, prompt="a cat <lora:ink:0.7>").graphs[0]
    (lora,) = _of(graph, "DSLoadLoRA")
    assert lora["lora_name"] == "ink.safetensors"
    assert lora["strength_model"] == 0.7 and lora["strength_text_encoder"] == 0.7
    encodes = _of(graph, "DSTextEncode")
    assert all("<lora" not in e["text"] for e in encodes)
    assert any(graph[e["text_encoder"][0]]["class_type"] == "DSLoadLoRA" for e in encodes)
    sampler = _of(graph, "DSSampler")[0]
    assert graph[sampler["model"][0]]["class_type"] == "DSLoadLoRA"


def test_flux_and_sd3_img2img_with_a_mask_become_an_inpaint_graph():
    import base64
    import io

    from PIL import Image

    def b64(image):
        out = io.BytesIO()
        image.save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode()

    for model in ("flux-dev", "sd3"):
        body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 1, "cfg_scale": 1.0,
                "override_settings": {"sd_model_checkpoint": model}, "init_images": [b64(Image.new("RGB", (64, 64)))],
                "mask": b64(Image.new("L", (64, 64), 255)), "inpaint_full_res": False}
        catalog = translate.Catalog(models=list(KINDS), node_types=["DSInpaint", "DSInpaintComposite"],
                                    store_image=lambda png: "x.png",
                                    model_family=lambda name: families.get(*KINDS[name]))
        plan = translate.build_plan(models.Img2ImgRequest.model_validate(body), "img2img", {}, catalog)
        graph = plan.graphs[0]
        assert _of(graph, "DSInpaint") and _of(graph, "DSInpaintComposite")
        assert bool(_of(graph, "DSFluxGuidance")) == (model == "flux-dev")
