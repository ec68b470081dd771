"""Face alignment: the five-point FFHQ template, a similarity transform, and affine warps in torch.

Face restorers (GFPGAN, CodeFormer, RestoreFormer) are trained on FFHQ crops: 512x512,
the eyes, nose tip and mouth corners at fixed places. A1111 (through facexlib) maps each
detected face's five landmarks onto that template with a similarity transform (rotation,
uniform scale, translation: four unknowns, solved by least squares), warps the picture
into a crop, restores it, and warps the result back with the inverse transform.

Coordinates are pixel centres (pixel (0, 0) is the point (0, 0)), as OpenCV's warpAffine
uses them; a 2x3 matrix M maps a source point to its place in the destination.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FACE_SIZE = 512
# The FFHQ five-point template for 512x512 crops (facexlib / GFPGAN): the eye on the image's
# left, the other eye, the nose tip, the mouth corner on the left, the other mouth corner.
FFHQ_TEMPLATE = np.array([
    [192.98138, 239.94708],
    [318.90277, 240.19360],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
], dtype=np.float64)
# facexlib's border colour outside the picture (BGR 135, 133, 132), here RGB in 0..1.
BORDER_RGB = (132 / 255, 133 / 255, 135 / 255)


def similarity_transform(src, dst) -> np.ndarray:
    """The 2x3 similarity matrix that maps the points `src` onto `dst` best (least squares).

    x' = a x - b y + tx, y' = b x + a y + ty; the four unknowns (a, b, tx, ty) solve an
    overdetermined linear system, two rows per point."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"similarity_transform: needs two matching point lists of 2+ points, got {src.shape}, {dst.shape}")
    rows = []
    for x, y in src:
        rows.append([x, -y, 1.0, 0.0])
        rows.append([y, x, 0.0, 1.0])
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), dst.reshape(-1), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]], dtype=np.float64)


def invert_affine(matrix) -> np.ndarray:
    """The 2x3 inverse of a 2x3 affine matrix."""
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _to_normalised(height: int, width: int) -> np.ndarray:
    """Pixel-centre coordinates -> grid_sample's [-1, 1] (align_corners=False)."""
    return np.array([[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0],
                     [0.0, 0.0, 1.0]])


def warp_affine(image: torch.Tensor, matrix, size: tuple, fill=None) -> torch.Tensor:
    """Warp [B, C, H, W] by the 2x3 `matrix` (source -> destination pixels) to `size` (height, width).

    Bilinear; outside the source the result is `fill` (per channel; None is 0), blended at the
    edge as a constant border would be."""
    out_h, out_w = size
    in_h, in_w = image.shape[-2:]
    inverse = np.vstack([invert_affine(matrix), [0.0, 0.0, 1.0]])
    theta = _to_normalised(in_h, in_w) @ inverse @ np.linalg.inv(_to_normalised(out_h, out_w))
    theta_t = torch.tensor(theta[:2], dtype=torch.float32, device=image.device).expand(image.shape[0], 2, 3)
    grid = F.affine_grid(theta_t, [image.shape[0], 1, out_h, out_w], align_corners=False)
    if fill is None:
        return F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ones = torch.ones_like(image[:, :1])
    sampled = F.grid_sample(torch.cat([image.float(), ones.float()], dim=1), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    colour = torch.tensor(fill, dtype=torch.float32, device=image.device).reshape(1, -1, 1, 1)
    return sampled[:, :-1] + (1.0 - sampled[:, -1:]) * colour


def align_face(image: torch.Tensor, landmarks, face_size: int = FACE_SIZE) -> tuple[torch.Tensor, np.ndarray]:
    """(the face's template crop [B, C, face_size, face_size], the 2x3 image -> crop matrix)."""
    template = FFHQ_TEMPLATE * (face_size / FACE_SIZE)
    matrix = similarity_transform(landmarks, template)
    return warp_affine(image, matrix, (face_size, face_size), fill=BORDER_RGB[: image.shape[1]]), matrix


__all__ = ["BORDER_RGB", "FACE_SIZE", "FFHQ_TEMPLATE", "align_face", "invert_affine", "similarity_transform",
           "warp_affine"]
