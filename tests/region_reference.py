"""The backend's stroke rule, worked out by brute force, for the region tests.

Shared by tests/nodes/test_region_masks.py (against the node's closed form)
and tests/browser/test_region_editor.py (against the masks the server makes
from what the editor drew): a pixel is painted when its centre lies within
size/2 (size a fraction of the picture's shorter side) of the stroke's
polyline, round ends and corners; a single point is a disc.
"""
from __future__ import annotations

import numpy as np


def stroke_pixels(width: int, height: int, points, size: float, grow: float = 0.0) -> np.ndarray:
    """Pixels whose centre lies within size/2 (of the shorter side) + `grow` px of the polyline."""
    radius = max(size * min(width, height) / 2 + grow, 0.0)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    pts = np.asarray(points, dtype=np.float64) * [width, height]
    pts = np.vstack([pts, pts]) if len(pts) == 1 else pts
    out = np.zeros((height, width), dtype=bool)
    for a, b in zip(pts[:-1], pts[1:]):
        d = b - a
        length2 = float(d @ d)
        t = np.zeros_like(xs) if length2 == 0 else np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0, 1)
        out |= (xs - a[0] - t * d[0]) ** 2 + (ys - a[1] - t * d[1]) ** 2 <= radius * radius
    return out
