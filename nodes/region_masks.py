"""DSRegionCanvas: the region editor's node, drawn regions to MASKs.

The editor (web/js/region_editor.js) draws a canvas on this node where the
user draws, moves and resizes one rectangle per region and paints or erases
free-hand strokes (InvokeAI's regional guidance paints its regions). What it
draws is kept in the `regions` STRING widget as JSON, so it is saved in the
workflow (the widget's value) and restored when the workflow loads, and an API
user can write the same JSON by hand:

    {"version": 1, "regions": [
        {"x": 0.1, "y": 0.1, "w": 0.4, "h": 0.5},
        {"strokes": [{"points": [[0.6, 0.2], [0.8, 0.4]], "size": 0.05},
                     {"points": [[0.7, 0.3]], "size": 0.02, "erase": true}]},
        null]}

x, y, w, h are fractions (0..1) of the picture's width and height. A region
has a rectangle (all four keys), strokes, or both. A stroke's points are
fractions too; `size` is the brush's diameter as a fraction of the picture's
shorter side, so a drawing keeps its look when width and height change
together. The region's mask is its rectangle, then each stroke in order: a
brush stroke sets every pixel whose centre lies within size/2 of the stroke's
polyline (round caps and joins), an eraser stroke (`"erase": true`) clears
them. A missing or null region is an empty (all-zero) mask, which Diffusers
Regional Prompt ignores.

Rectangle-only regions come from engine/regional.rectangle_mask, as DSRectMask's
do, so workflows drawn before strokes existed give the very same masks. A region
with strokes is painted hard at the node's size, then `feather` blurs it with a
box of that width (replicated at the border): across a straight edge that is the
same ramp, centred on the edge, as a feathered rectangle's.

The JSON lives in the workflow and is sent with every prompt, so its size is
capped (MAX_CHARS, MAX_STROKES per region, MAX_POINTS per stroke); the editor
drops points closer than 0.5 % of the canvas to stay far below the caps.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch
from comfy_api.latest import io

from .engine.regional import rectangle_mask
from .regional import MAX_SIZE
from .types import category

MAX_REGIONS = 4
MAX_POINTS = 1000  # per stroke: a long drag, simplified, is a few hundred
MAX_STROKES = 100  # per region
MAX_CHARS = 256 * 1024  # of the whole JSON: what rides in every saved workflow and prompt
EMPTY = '{"version": 1, "regions": []}'
_KEYS = ("x", "y", "w", "h")
_EXAMPLE = ('{"version": 1, "regions": [{"x": 0.1, "y": 0.1, "w": 0.4, "h": 0.5}, '
            '{"strokes": [{"points": [[0.6, 0.2], [0.8, 0.4]], "size": 0.05}]}]}')
_CHUNK = 1 << 22  # (segment, row) pairs worked on at once: bounds memory for huge brushes


def _fraction(value) -> bool:
    """A finite number (not a bool) within 0..1, with a little slack for rounding."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and -1e-6 <= value <= 1.0 + 1e-6)


def _clamp(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)


def _parse_stroke(stroke, where: str) -> dict:
    """One stroke: {"points": [(x, y), ...], "size": float, "erase": bool}, or ValueError."""
    if not isinstance(stroke, dict):
        raise ValueError(f"regions: {where} is {stroke!r:.80}, expected an object "
                         '{"points": [[x, y], ...], "size": 0.05, "erase": false}.')
    points = stroke.get("points")
    if not isinstance(points, list) or not points:
        raise ValueError(f"regions: {where} has points={points!r:.80}; give a non-empty list of [x, y] pairs, "
                         "fractions (0..1) of the picture's width and height.")
    if len(points) > MAX_POINTS:
        raise ValueError(f"regions: {where} has {len(points)} points, at most {MAX_POINTS}; split it into "
                         "several strokes or drop points that lie close together (the editor keeps one "
                         "every 0.5 % of the canvas).")
    parsed = []
    for number, point in enumerate(points, start=1):
        if not (isinstance(point, (list, tuple)) and len(point) == 2 and all(map(_fraction, point))):
            raise ValueError(f"regions: {where}, point {number} is {point!r:.80}; each point is [x, y], two "
                             "numbers, fractions (0..1) of the picture's width and height.")
        parsed.append((_clamp(point[0]), _clamp(point[1])))
    size = stroke.get("size")
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) \
            or not 0 < size <= 1:
        raise ValueError(f"regions: {where} has size={size!r:.40}; size is the brush diameter as a fraction "
                         "of the picture's shorter side, more than 0 and at most 1 (0.05 = 5 %).")
    erase = stroke.get("erase", False)
    if not isinstance(erase, bool):
        raise ValueError(f"regions: {where} has erase={erase!r:.40}; use true (eraser) or false (brush).")
    return {"points": parsed, "size": float(size), "erase": erase}


def _parse_region(region, number: int) -> dict | None:
    """One region: {"rect": {x, y, w, h} or None, "strokes": [...]}, None when empty."""
    if not isinstance(region, dict):
        raise ValueError(f"regions: region {number} is {region!r:.80}, expected an object with x, y, w, h "
                         'and/or "strokes", or null.')
    rect = None
    if any(key in region for key in _KEYS) or "strokes" not in region:
        rect = {}
        for key in _KEYS:
            value = region.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"regions: region {number} has {key}={value!r}; x, y, w, h must be "
                                 "numbers, fractions (0..1) of the picture (or leave all four out for a "
                                 "painted-only region).")
            if not _fraction(value):
                raise ValueError(f"regions: region {number} has {key}={value}, outside 0..1; x, y, w, h "
                                 "are fractions of the picture's width and height.")
            rect[key] = _clamp(value)
    strokes = region.get("strokes", [])
    if not isinstance(strokes, list):
        raise ValueError(f"regions: region {number} has strokes={strokes!r:.80}; give a list of strokes "
                         '[{"points": [[x, y], ...], "size": 0.05}, ...].')
    if len(strokes) > MAX_STROKES:
        raise ValueError(f"regions: region {number} has {len(strokes)} strokes, at most {MAX_STROKES}; "
                         "clear the region and paint it with fewer, longer strokes.")
    parsed = [_parse_stroke(stroke, f"region {number}, stroke {index}")
              for index, stroke in enumerate(strokes, start=1)]
    if rect is None and not parsed:
        return None
    return {"rect": rect, "strokes": parsed}


def parse_regions(text: str) -> list[dict | None]:
    """The regions of the widget's JSON, MAX_REGIONS long (None = nothing drawn).

    Each region is {"rect": {"x", "y", "w", "h"} or None, "strokes": [{"points",
    "size", "erase"}, ...]}. Raises ValueError naming the `regions` input, the
    region and the fix for anything malformed or over the caps.
    """
    text = text or EMPTY
    if len(text) > MAX_CHARS:
        raise ValueError(f"regions: the JSON is {len(text)} characters, at most {MAX_CHARS}; clear some "
                         "painted regions and paint them again with fewer strokes.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"regions: not valid JSON ({error}); draw the regions in the node's editor "
                         f"or give {_EXAMPLE}.")
    regions = data.get("regions") if isinstance(data, dict) else None
    if not isinstance(regions, list):
        raise ValueError('regions: expected an object with a "regions" list, got ' + repr(text)[:120])
    if len(regions) > MAX_REGIONS:
        raise ValueError(f"regions: {len(regions)} regions given, the node has {MAX_REGIONS} mask outputs.")
    parsed = [None if region is None else _parse_region(region, index)
              for index, region in enumerate(regions, start=1)]
    return parsed + [None] * (MAX_REGIONS - len(parsed))


def _row_interval(alpha, beta, low, high):
    """Per row, the t with low <= alpha * t + beta <= high: (start, end), start > end when none.

    alpha, beta, high are arrays; where alpha is 0 the condition holds for all
    t or for none.
    """
    flat = np.abs(alpha) <= 1e-12
    safe = np.where(flat, 1.0, alpha)
    first, second = (low - beta) / safe, (high - beta) / safe
    inside = (beta >= low) & (beta <= high)
    start = np.where(flat, np.where(inside, -np.inf, np.inf), np.minimum(first, second))
    end = np.where(flat, np.where(inside, np.inf, -np.inf), np.maximum(first, second))
    return start, end


def stroke_coverage(width: int, height: int, points, size: float) -> np.ndarray:
    """[height, width] bool: pixels whose centre lies within size/2 of the stroke's polyline.

    `points` are fractions of the picture, `size` the diameter as a fraction of
    the shorter side. Worked out row by row in closed form (no anti-aliasing,
    no drawing library's pixel rules), so tests and the editor can predict it.
    """
    radius = size * min(width, height) / 2.0
    pts = np.asarray(points, dtype=np.float64) * np.array([width, height], dtype=np.float64)
    if len(pts) == 1:
        pts = np.vstack([pts, pts])
    a, b = pts[:-1], pts[1:]
    # Work in the stroke's bounding box of pixel rows and columns only.
    left = int(np.clip(np.floor(pts[:, 0].min() - radius - 0.5), 0, width - 1))
    right = int(np.clip(np.ceil(pts[:, 0].max() + radius - 0.5), 0, width - 1))
    covered = np.zeros((height, right - left + 2), dtype=np.int32)
    top = np.clip(np.floor(np.minimum(a[:, 1], b[:, 1]) - radius - 0.5), 0, height - 1).astype(np.int64)
    bottom = np.clip(np.ceil(np.maximum(a[:, 1], b[:, 1]) + radius - 0.5), 0, height - 1).astype(np.int64)
    counts = bottom - top + 1
    first = 0
    while first < len(a):
        # As many segments as fit in one chunk of (segment, row) pairs (at least one).
        last = first + max(1, int(np.searchsorted(np.cumsum(counts[first:]), _CHUNK, side="right")))
        seg = np.repeat(np.arange(first, last), counts[first:last])
        offsets = np.cumsum(counts[first:last]) - counts[first:last]
        row = top[seg] + (np.arange(len(seg)) - offsets[seg - first])
        yc = row + 0.5
        ax, ay, bx, by = a[seg, 0], a[seg, 1], b[seg, 0], b[seg, 1]
        start = np.full(len(seg), np.inf)
        end = np.full(len(seg), -np.inf)
        for cx, cy in ((ax, ay), (bx, by)):  # the round caps and joins
            reach = radius * radius - (yc - cy) ** 2
            half = np.sqrt(np.maximum(reach, 0.0))
            start = np.where(reach >= 0, np.minimum(start, cx - half), start)
            end = np.where(reach >= 0, np.maximum(end, cx + half), end)
        dx, dy = bx - ax, by - ay
        length = np.hypot(dx, dy)
        safe = np.where(length > 0, length, 1.0)
        ux, uy = dx / safe, dy / safe
        # The band between the caps: 0 <= (p - a).u <= length and |(p - a).n| <= radius, with
        # n = (-uy, ux) and p = (x, yc): each is low <= alpha * (x - ax) + beta <= high.
        along = _row_interval(ux, (yc - ay) * uy, 0.0, length)
        across = _row_interval(-uy, (yc - ay) * ux, -radius, radius)
        band_start = ax + np.maximum(along[0], across[0])
        band_end = ax + np.minimum(along[1], across[1])
        band = (length > 0) & (band_start <= band_end)
        start = np.where(band, np.minimum(start, band_start), start)
        end = np.where(band, np.maximum(end, band_end), end)
        # Pixel columns whose centre (i + 0.5) lies in [start, end].
        c0 = np.clip(np.ceil(start - 0.5), left, right + 1).astype(np.int64)
        c1 = np.clip(np.floor(end - 0.5), left - 1, right).astype(np.int64)
        keep = np.isfinite(start) & (c0 <= c1)
        np.add.at(covered, (row[keep], c0[keep] - left), 1)
        np.add.at(covered, (row[keep], c1[keep] + 1 - left), -1)
        first = last
    rows = slice(int(top.min()), int(bottom.max()) + 1)
    mask = np.zeros((height, width), dtype=bool)
    mask[rows, left:right + 1] = np.cumsum(covered[rows], axis=1)[:, :-1] > 0
    return mask


def paint_region(width: int, height: int, region: dict) -> torch.Tensor:
    """[1, height, width] hard 0/1 mask: the rectangle, then each stroke painted or erased in order."""
    rect = region["rect"]
    if rect is not None:
        mask = rectangle_mask(width, height, rect["x"] * width, rect["y"] * height,
                              rect["w"] * width, rect["h"] * height)[0].numpy() > 0.5
    else:
        mask = np.zeros((height, width), dtype=bool)
    for stroke in region["strokes"]:
        mask[stroke_coverage(width, height, stroke["points"], stroke["size"])] = not stroke["erase"]
    return torch.from_numpy(mask.astype(np.float32))[None]


def _box_blur(values: np.ndarray, feather: float, axis: int) -> np.ndarray:
    """Mean over a box `feather` pixels wide centred on each pixel, along `axis`, border replicated.

    The box's ends cover part of a pixel when the width is even (weight 1/2
    there), so every width is centred and a hard straight edge becomes a
    linear ramp exactly `feather` pixels wide, centred on the edge.
    """
    half = feather / 2.0
    full = int(math.floor(half - 0.5))  # neighbours on each side with weight 1
    part = half - (full + 0.5)  # weight of the next one, 0..1
    reach = full + 1
    padded = np.pad(values, [(reach, reach) if dim == axis else (0, 0) for dim in range(values.ndim)], mode="edge")
    sums = np.cumsum(padded, axis=axis, dtype=np.float64)
    sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)
    n = values.shape[axis]
    idx = np.arange(n) + reach  # positions of the original pixels in `padded`
    window = np.take(sums, idx + full + 1, axis=axis) - np.take(sums, idx - full, axis=axis)
    edges = np.take(padded, idx - reach, axis=axis) + np.take(padded, idx + reach, axis=axis)
    return (window + part * edges) / feather


def feather_mask(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """A painted [1, H, W] mask with a soft edge `feather` pixels wide (0 = unchanged)."""
    if feather <= 0:
        return mask
    values = mask[0].numpy().astype(np.float64)
    values = _box_blur(_box_blur(values, float(feather), 0), float(feather), 1)
    return torch.from_numpy(np.clip(values, 0.0, 1.0).astype(np.float32))[None]


def region_mask(width: int, height: int, region: dict | None, feather: int = 0) -> torch.Tensor:
    """One output's [1, height, width] mask from a parsed region (see the module docstring)."""
    if region is None:
        return rectangle_mask(width, height, 0.0, 0.0, 0.0, 0.0)
    rect = region["rect"]
    if not region["strokes"]:  # the rectangle alone: exactly as before strokes existed
        return rectangle_mask(width, height, rect["x"] * width, rect["y"] * height,
                              rect["w"] * width, rect["h"] * height, feather)
    return feather_mask(paint_region(width, height, region), feather)


class DSRegionCanvas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSRegionCanvas",
            display_name="Diffusers Region Canvas",
            category=category("regional"),
            description=(
                "Draw the regions of a regional prompt on the node: pick a region, drag a rectangle on the "
                "canvas (drag it to move it, by its corner to resize it) and/or paint it free-hand with the "
                "brush, and take parts away with the eraser. Each region comes out as a MASK for Diffusers "
                "Regional Prompt (or any mask input); the editor shows each region in its colour with the "
                "first words of the prompt it feeds."
            ),
            inputs=[
                io.Int.Input("width", default=512, min=8, max=MAX_SIZE, step=8,
                             tooltip="Width of the masks in pixels; use the picture's width. The canvas "
                             "takes this aspect ratio (SD3/Flux regional prompts refuse masks of another "
                             "aspect ratio than the picture; SD1.x/SDXL stretch them)."),
                io.Int.Input("height", default=512, min=8, max=MAX_SIZE, step=8,
                             tooltip="Height of the masks in pixels; use the picture's height."),
                io.Int.Input("feather", default=0, min=0, max=MAX_SIZE, step=1,
                             tooltip="Soft edge of every region in pixels (a ramp centred on the edge of "
                             "the rectangle and of painted strokes), so regions blend without a seam; "
                             "0 = hard edges."),
                io.String.Input("regions", default=EMPTY, multiline=False,
                                tooltip="The drawn regions as JSON (written by the canvas editor): "
                                '{"version": 1, "regions": [{"x", "y", "w", "h", "strokes": [{"points": '
                                '[[x, y], ...], "size", "erase"}]} or null, ...]}, fractions of the picture, '
                                f"at most 4 regions, {MAX_STROKES} strokes a region, {MAX_POINTS} points a "
                                f"stroke, {MAX_CHARS // 1024} KiB in all."),
            ],
            outputs=[
                io.Mask.Output(f"region_{index}", display_name=f"region_{index}",
                               tooltip=f"Region {index}'s mask, [1, height, width], 0..1; all zero when "
                               "nothing is drawn for the region (Regional Prompt then ignores it).")
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
        return io.NodeOutput(*(region_mask(width, height, region, feather) for region in parse_regions(regions)))


NODES = [DSRegionCanvas]
