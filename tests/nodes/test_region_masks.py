"""DSRegionCanvas (the region editor's node) as ComfyUI calls it: JSON rectangles to MASKs."""
from __future__ import annotations

import json

import pytest
import torch


def _regions(*rects) -> str:
    return json.dumps({"version": 1, "regions": list(rects)})


def test_schema_has_tooltips_and_the_pack_lists_it(models_dir):
    from diffusers_studio.nodes.extension import NODES
    from diffusers_studio.nodes.region_masks import MAX_REGIONS, DSRegionCanvas

    schema = DSRegionCanvas.define_schema()
    assert schema.category == "Diffusers Studio/regional" and schema.description
    assert all(socket.tooltip for socket in list(schema.inputs) + list(schema.outputs))
    assert len(schema.outputs) == MAX_REGIONS
    assert DSRegionCanvas in NODES


def test_rectangles_in_fractions_become_masks_like_rect_mask(models_dir):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas
    from diffusers_studio.nodes.regional import DSRectMask

    regions = _regions({"x": 0.5, "y": 0.0, "w": 0.5, "h": 1.0}, None, {"x": 0.25, "y": 0.25, "w": 0.5, "h": 0.5})
    masks = DSRegionCanvas.execute(64, 32, 0, regions).args
    assert len(masks) == 4 and all(mask.shape == (1, 32, 64) for mask in masks)
    assert masks[0][0, :, 32:].eq(1).all() and masks[0][0, :, :32].eq(0).all()
    assert masks[1].eq(0).all() and masks[3].eq(0).all()
    expected = DSRectMask.execute(64, 32, "fraction", 0.25, 0.25, 0.5, 0.5, 0).args[0]
    assert torch.equal(masks[2], expected)
    feathered = DSRegionCanvas.execute(64, 32, 8, regions).args[2]
    assert torch.equal(feathered, DSRectMask.execute(64, 32, "fraction", 0.25, 0.25, 0.5, 0.5, 8).args[0])


def test_empty_regions_give_empty_masks(models_dir):
    from diffusers_studio.nodes.region_masks import EMPTY, DSRegionCanvas

    for text in (EMPTY, ""):
        masks = DSRegionCanvas.execute(16, 16, 0, text).args
        assert len(masks) == 4 and all(mask.eq(0).all() for mask in masks)


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "not valid JSON"),
        ('{"regions": 3}', '"regions" list'),
        (_regions(*[None] * 5), "4 mask outputs"),
        (_regions({"x": 0.1, "y": 0.1, "w": 0.5}), "h=None"),
        (_regions({"x": 2, "y": 0.1, "w": 0.5, "h": 0.5}), "x=2"),
        (_regions("left"), "region 1"),
    ],
)
def test_bad_json_is_a_clear_error_naming_the_input(models_dir, text, words):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas

    message = DSRegionCanvas.validate_inputs(text)
    assert isinstance(message, str) and message.startswith("regions:") and words in message
    with pytest.raises(ValueError, match="regions:"):
        DSRegionCanvas.execute(16, 16, 0, text)
