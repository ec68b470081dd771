"""DSRegionCanvas: the region editor's node, rectangles drawn on the node to MASKs.

The editor (web/js/region_editor.js) draws a canvas on this node where the
user draws, moves and resizes one rectangle per region. What it draws is kept
in the `regions` STRING widget as JSON, so it is saved in the workflow (the
widget's value) and restored when the workflow loads, and an API user can
write the same JSON by hand:

    {"version": 1, "regions": [{"x": 0.1, "y": 0.1, "w": 0.4, "h": 0.5}, null, ...]}

x, y, w, h are fractions (0..1) of the picture's width and height; a missing
or null region is an empty (all-zero) mask, which Diffusers Regional Prompt
ignores. The masks come from engine/regional.rectangle_mask, as DSRectMask's do.
"""
from __future__ import annotations

import json
import math

from comfy_api.latest import io

from .engine.regional import rectangle_mask
from .regional import MAX_SIZE
from .types import category

MAX_REGIONS = 4
EMPTY = '{"version": 1, "regions": []}'
_KEYS = ("x", "y", "w", "h")


def parse_regions(text: str) -> list[dict | None]:
    """The regions of the widget's JSON, MAX_REGIONS long (None = no rectangle).

    Raises ValueError naming the `regions` input for anything malformed.
    """
    try:
        data = json.loads(text or EMPTY)
    except json.JSONDecodeError as error:
        raise ValueError(f"regions: not valid JSON ({error}); draw the regions in the node's editor "
                         'or give {"version": 1, "regions": [{"x": 0.1, "y": 0.1, "w": 0.4, "h": 0.5}]}.')
    regions = data.get("regions") if isinstance(data, dict) else None
    if not isinstance(regions, list):
        raise ValueError('regions: expected an object with a "regions" list, got ' + repr(text)[:120])
    if len(regions) > MAX_REGIONS:
        raise ValueError(f"regions: {len(regions)} regions given, the node has {MAX_REGIONS} mask outputs.")
    parsed: list[dict | None] = []
    for index, region in enumerate(regions):
        if region is None:
            parsed.append(None)
            continue
        if not isinstance(region, dict):
            raise ValueError(f"regions: region {index + 1} is {region!r}, expected an object with x, y, w, h.")
        values = {}
        for key in _KEYS:
            value = region.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"regions: region {index + 1} has {key}={value!r}; x, y, w, h must be "
                                 "numbers, fractions (0..1) of the picture.")
            if not -1e-6 <= value <= 1.0 + 1e-6:
                raise ValueError(f"regions: region {index + 1} has {key}={value}, outside 0..1; x, y, w, h "
                                 "are fractions of the picture's width and height.")
            values[key] = min(max(float(value), 0.0), 1.0)
        parsed.append(values)
    return parsed + [None] * (MAX_REGIONS - len(parsed))


class DSRegionCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSRegionCanvas",
            display_name="Diffusers Region Canvas",
            category=category("regional"),
            description=(
                "Draw the regions of a regional prompt on the node: pick a region, drag a rectangle on the "
                "canvas, drag it to move it or by its corner to resize it. Each region comes out as a MASK "
                "for Diffusers Regional Prompt (or any mask input); the editor shows each region in its "
                "colour with the first words of the prompt it feeds."
            ),
            inputs=[
                io.Int.Input("width", default=512, min=8, max=MAX_SIZE, step=8,
                             tooltip="Width of the masks in pixels; use the picture's width. The canvas "
                             "takes this aspect ratio."),
                io.Int.Input("height", default=512, min=8, max=MAX_SIZE, step=8,
                             tooltip="Height of the masks in pixels; use the picture's height."),
                io.Int.Input("feather", default=0, min=0, max=MAX_SIZE, step=1,
                             tooltip="Soft edge of every rectangle in pixels (a ramp centred on the edge), "
                             "so regions blend without a seam; 0 = hard edges."),
                io.String.Input("regions", default=EMPTY, multiline=False,
                                tooltip="The drawn regions as JSON (written by the canvas editor): "
                                '{"version": 1, "regions": [{"x", "y", "w", "h"} or null, ...]}, '
                                "fractions of the picture, at most 4."),
            ],
            outputs=[
                io.Mask.Output(f"region_{index}", display_name=f"region_{index}",
                               tooltip=f"Region {index}'s mask, [1, height, width], 0..1; all zero when "
                               "the region has no rectangle (Regional Prompt then ignores it).")
                for index in range(1, MAX_REGIONS + 1)
            ],
        )

    @classmethod
    def validate_inputs(cls, regions: str = EMPTY) -> bool | str:
        try:
            parse_regions(regions)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, width: int, height: int, feather: int = 0, regions: str = EMPTY) -> io.NodeOutput:
        masks = []
        for region in parse_regions(regions):
            if region is None:
                masks.append(rectangle_mask(width, height, 0.0, 0.0, 0.0, 0.0))
                continue
            masks.append(rectangle_mask(width, height, region["x"] * width, region["y"] * height,
                                        region["w"] * width, region["h"] * height, feather))
        return io.NodeOutput(*masks)


NODES = [DSRegionCanvas]
