"""DSRegionCanvas (the region editor's node) as ComfyUI calls it: JSON rectangles and strokes to MASKs.

Painted strokes are checked against a brute-force reference (tests/region_reference.py): a
pixel is painted when its centre lies within size/2 (size a fraction of the
shorter side) of the stroke's polyline. The node works it out row by row in
closed form, so the two must agree pixel for pixel.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from region_reference import stroke_pixels as _reference


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
        (_regions(None, {"strokes": [{"points": [["a", 0.5]], "size": 0.1}]}), "region 2, stroke 1, point 1"),
        (_regions({"strokes": [{"points": [[0.5, 0.5]], "size": 0}]}), "region 1, stroke 1 has size=0"),
        (_regions({"strokes": [{"points": [[0.5, 0.5]], "size": 1.5}]}), "at most 1"),
        (_regions({"strokes": [{"points": [[0.5, 0.5]], "size": True}]}), "size=True"),
        (_regions({"strokes": [{"points": [[0.5, 1.5]], "size": 0.1}]}), "fractions (0..1)"),
        (_regions({"strokes": [{"points": [], "size": 0.1}]}), "non-empty list"),
        (_regions({"strokes": [{"points": [[0.5, 0.5]], "size": 0.1, "erase": "yes"}]}), "erase='yes'"),
        (_regions({"strokes": {"points": []}}), "list of strokes"),
        (_regions(None, None, {"strokes": [{"points": [[0.5, 0.5]] * 1001, "size": 0.1}]}),
         "region 3, stroke 1 has 1001 points, at most 1000; split it"),
        (_regions({"strokes": [{"points": [[0.5, 0.5]], "size": 0.1}] * 101}), "101 strokes, at most 100"),
        (_regions(*[{"strokes": [{"points": [[0.123456789, 0.5]] * 1000, "size": 0.1}] * 5}] * 4),
         "characters, at most 262144"),
    ],
)
def test_bad_json_is_a_clear_error_naming_the_input(models_dir, text, words):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas

    message = DSRegionCanvas.validate_inputs(text)
    assert isinstance(message, str) and message.startswith("regions:") and words in message
    with pytest.raises(ValueError, match="regions:"):
        DSRegionCanvas.execute(16, 16, 0, text)


def _stroke(points, size, erase=False) -> dict:
    return {"points": points, "size": size, "erase": erase}


def test_a_single_point_stroke_is_a_disc_of_the_brush_radius(models_dir):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas

    # 96x64: the shorter side is 64, so size 0.25 is a 16 px diameter, radius 8.
    mask = DSRegionCanvas.execute(96, 64, 0, _regions({"strokes": [_stroke([[0.5, 0.5]], 0.25)]})).args[0][0]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    ys, xs = np.nonzero(mask.numpy())
    distance = np.hypot(xs + 0.5 - 48, ys + 0.5 - 32)
    assert distance.max() <= 8 and mask[32, 48 + 7] == 1 and mask[32, 48 + 8] == 0
    assert xs.max() - xs.min() + 1 == 16 and ys.max() - ys.min() + 1 == 16  # 16 px across, both ways
    assert abs(mask.sum().item() - np.pi * 8 ** 2) < 2 * np.pi * 8  # the area of the disc, up to its rim
    assert np.array_equal(mask.numpy() > 0, _reference(96, 64, [[0.5, 0.5]], 0.25))


def test_a_stroke_across_the_canvas_covers_its_line(models_dir):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas

    points = [[0.05, 0.1], [0.5, 0.8], [0.95, 0.3]]
    mask = DSRegionCanvas.execute(80, 60, 0, _regions({"strokes": [_stroke(points, 0.1)]})).args[0][0].numpy()
    expected = _reference(80, 60, points, 0.1)
    assert np.array_equal(mask > 0, expected)
    # Every pixel the polyline itself passes through is painted; far from it nothing is.
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        for t in np.linspace(0, 1, 200):
            assert mask[int((y0 + t * (y1 - y0)) * 60), int((x0 + t * (x1 - x0)) * 80)] == 1
    assert mask[0:3, 70:80].max() == 0 and mask[57:60, 0:10].max() == 0


def test_random_strokes_match_the_reference_pixel_for_pixel(models_dir):
    from diffusers_studio.nodes.region_masks import stroke_coverage

    rng = np.random.default_rng(0)
    for _ in range(60):
        width, height = (int(v) for v in rng.integers(8, 70, 2))
        points = rng.uniform(0, 1, (int(rng.integers(1, 7)), 2)).tolist()
        size = float(rng.choice([0.02, 0.07, 0.2, 0.6, 1.0]))
        assert np.array_equal(stroke_coverage(width, height, points, size), _reference(width, height, points, size))


def test_erase_removes_in_stroke_order_and_rectangles_combine(models_dir):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas

    line = [[0.1, 0.5], [0.9, 0.5]]
    rubber = [[0.5, 0.2], [0.5, 0.8]]
    painted = _reference(64, 64, line, 0.2)
    erased = _reference(64, 64, rubber, 0.15)
    regions = _regions(
        {"strokes": [_stroke(line, 0.2), _stroke(rubber, 0.15, erase=True)]},
        {"strokes": [_stroke(rubber, 0.15, erase=True), _stroke(line, 0.2)]},  # erased first: nothing to erase
        {"x": 0.0, "y": 0.0, "w": 0.5, "h": 1.0, "strokes": [_stroke(line, 0.2), _stroke(rubber, 0.15, True)]},
        {"x": 0.0, "y": 0.0, "w": 0.5, "h": 1.0, "strokes": []},
    )
    masks = [mask[0].numpy() > 0 for mask in DSRegionCanvas.execute(64, 64, 0, regions).args]
    assert np.array_equal(masks[0], painted & ~erased) and erased.any() and (painted & erased).any()
    assert np.array_equal(masks[1], painted)
    left = np.zeros((64, 64), dtype=bool)
    left[:, :32] = True
    assert np.array_equal(masks[2], (left | painted) & ~erased)
    assert np.array_equal(masks[3], left)  # an empty stroke list: the rectangle as before


def test_feather_softens_painted_edges_with_the_rectangle_ramp(models_dir):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas

    # A rectangle drawn as strokes is not a rectangle region, so it takes the painted path;
    # a painted region that covers one straight edge must ramp like DSRectMask's feather.
    square = {"x": 0.25, "y": 0.0, "w": 0.5, "h": 1.0}
    dot = _stroke([[0.02, 0.02]], 0.01)  # too small to cover a pixel centre: forces the painted path
    rect, painted = (DSRegionCanvas.execute(64, 32, 8, _regions(region)).args[0]
                     for region in (square, dict(square, strokes=[dot])))
    assert torch.allclose(rect, painted, atol=1e-6)
    soft = DSRegionCanvas.execute(64, 64, 6, _regions({"strokes": [_stroke([[0.5, 0.5]], 0.5)]})).args[0][0]
    assert soft.max() == 1 and soft.min() == 0 and ((soft > 0) & (soft < 1)).sum() > 0
    hard = DSRegionCanvas.execute(64, 64, 0, _regions({"strokes": [_stroke([[0.5, 0.5]], 0.5)]})).args[0][0]
    assert abs(soft.sum() - hard.sum()) < 0.02 * hard.sum()  # a centred ramp keeps the area


def test_a_painted_only_region_and_an_empty_stroke_list(models_dir):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas, parse_regions

    assert parse_regions(_regions({"strokes": []}))[0] is None
    masks = DSRegionCanvas.execute(16, 16, 0, _regions({"strokes": []})).args
    assert all(mask.eq(0).all() for mask in masks)
    assert DSRegionCanvas.validate_inputs(_regions(None, {"strokes": [_stroke([[0.5, 0.5]], 0.3)]})) is True
