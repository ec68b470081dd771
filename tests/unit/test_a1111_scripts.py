"""A1111 `tiling` and the "SD upscale" script -> graphs of DSSeamlessTiling / DSSDUpscale (no server, no models)."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from harness.a1111_pack import a1111_module

translate = a1111_module("translate")
errors = a1111_module("errors")
models = a1111_module("models")

NODE_TYPES = ["DSSeamlessTiling", "DSSDUpscale", "DSInpaint", "DSInpaintComposite"]


def _plan(kind: str, stored=None, upscale_models=(), **fields):
    stored = [] if stored is None else stored

    def store(png: bytes) -> str:
        stored.append(Image.open(io.BytesIO(png)))
        return f"img{len(stored)}.png"

    catalog = translate.Catalog(models=["m.safetensors"], node_types=NODE_TYPES, store_image=store,
                                upscale_models=list(upscale_models))
    body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 1, **fields}
    cls = models.Txt2ImgRequest if kind == "txt2img" else models.Img2ImgRequest
    return translate.build_plan(cls.model_validate(body), kind, {}, catalog)


def _by_class(graph: dict, class_type: str) -> list[tuple[str, dict]]:
    return [(nid, node["inputs"]) for nid, node in graph.items() if node["class_type"] == class_type]


def _b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("hires", [False, True])
def test_tiling_routes_model_and_vae_through_seamless_tiling(hires):
    extra = {"enable_hr": True, "hr_upscaler": "Lanczos", "hr_scale": 2} if hires else {}
    plan = _plan("txt2img", tiling=True, **extra)
    graph = plan.graphs[0]
    (tiled_id, tiled), = _by_class(graph, "DSSeamlessTiling")
    assert tiled["axes"] == "both"
    for _, sampler in _by_class(graph, "DSSampler"):
        assert sampler["model"] == [tiled_id, 0]
    for class_type in ("DSVAEDecode", "DSVAEEncode"):
        for _, node in _by_class(graph, class_type):
            assert node["vae"] == [tiled_id, 1]
    assert "Tiling: True" in plan.infotexts[0]
    assert plan.info["extra_generation_params"]["Tiling"] is True
    assert not _by_class(_plan("txt2img", tiling=False).graphs[0], "DSSeamlessTiling")


def test_tiling_reads_back_from_the_infotext():
    fields = translate.infotext.request_fields_from_infotext(
        "a cat\nSteps: 4, Sampler: Euler, Tiling: True", models.Txt2ImgRequest.model_fields)
    assert models.Txt2ImgRequest.model_validate({**fields}).tiling is True


def _upscale(stored=None, args=("", 8, "Lanczos", 2.0), upscale_models=(), **fields):
    picture = Image.new("RGB", (80, 48), "gray")
    return _plan("img2img", stored, upscale_models, init_images=[_b64(picture)], script_name="SD upscale",
                 script_args=list(args), denoising_strength=0.3, **fields)


def test_sd_upscale_is_one_node_on_the_init_image_at_its_own_size():
    stored: list = []
    plan = _upscale(stored, n_iter=2, batch_size=3)
    assert stored[0].size == (80, 48)  # not resized to width x height: A1111 upscales the picture itself
    assert len(plan.graphs) == 2 and plan.samples_per_graph == 1  # one picture per iteration, as A1111
    for k, graph in enumerate(plan.graphs):
        (node_id, node), = _by_class(graph, "DSSDUpscale")
        assert (node["tile_width"], node["tile_height"], node["overlap"], node["scale"]) == (64, 64, 8, 2.0)
        assert node["upscale_method"] == "lanczos" and node["denoise"] == 0.3 and node["seed"] == 1 + k
        assert "upscale_model" not in node
        assert not _by_class(graph, "DSSampler") and not _by_class(graph, "DSVAEEncode")
        assert plan.sampler_steps[k] == {node_id: 4}
        (_, out), = _by_class(graph, "PreviewImage")
        assert out["images"] == [node_id, 0]
    assert plan.info["all_seeds"] == [1, 2]
    assert "SD upscale overlap: 8, SD upscale upscaler: Lanczos" in plan.infotexts[0]


@pytest.mark.parametrize("upscaler, method, scale", [(0, "lanczos", 1.0), (1, "lanczos", 2.0),
                                                     (2, "nearest-exact", 2.0), ("nearest", "nearest-exact", 2.0)])
def test_sd_upscale_upscaler_by_index_or_name(upscaler, method, scale):
    (_, node), = _by_class(_upscale(args=("", 16, upscaler, 2.0)).graphs[0], "DSSDUpscale")
    assert (node["upscale_method"], node["scale"]) == (method, scale)  # "None" leaves the picture's size


def test_sd_upscale_with_an_upscale_model_file():
    graph = _upscale(args=("", 16, 3, 2.5), upscale_models=["4x-esrgan.pth"]).graphs[0]
    (_, node), = _by_class(graph, "DSSDUpscale")
    (loader_id, loader), = _by_class(graph, "UpscaleModelLoader")
    assert loader["model_name"] == "4x-esrgan.pth" and node["upscale_model"] == [loader_id, 0]


@pytest.mark.parametrize(
    "kwargs, status, needle",
    [({"args": ("", 8, 7, 2.0)}, 422, "upscaler index 7"),
     ({"args": ("", 8, "ESRGAN_4x", 2.0)}, 422, "upscaler 'ESRGAN_4x'"),
     ({"args": ("", 40, 1, 2.0)}, 422, "overlap 40 must be under half the tile"),
     ({"args": ("", 8, 1, 9.0)}, 422, "scale_factor 9.0"),
     ({"args": ("", "wide", 1, 2.0)}, 422, "script_args[1] (overlap): 'wide'"),
     ({"mask": "MASK"}, 422, "mask: the SD upscale script")],
)
def test_sd_upscale_mistakes_are_named(kwargs, status, needle):
    fields = {}
    if kwargs.get("mask"):
        fields["mask"] = _b64(Image.new("L", (80, 48), 255))
    with pytest.raises(errors.ApiError) as caught:
        _upscale(args=kwargs.get("args", ("", 8, 1, 2.0)), **fields)
    assert caught.value.status == status and needle in caught.value.detail


def test_other_scripts_and_sd_upscale_in_txt2img_are_not_found():
    for kind, name in (("txt2img", "sd upscale"), ("img2img", "X/Y/Z plot")):
        with pytest.raises(errors.ApiError) as caught:
            _plan(kind, script_name=name, init_images=[_b64(Image.new("RGB", (64, 64)))])
        assert caught.value.status == 422 and caught.value.detail == f"Script '{name}' not found"
