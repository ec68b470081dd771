"""Putting a restored face back: inverse warp and a feathered mask (facexlib's square mask).

The restored 512x512 crop is warped back with the inverse of the alignment transform. A
mask of ones warped the same way marks where the crop lands; it is eroded by a pixel (the
warp's soft edge would otherwise carry the crop's border colour in), then eroded further
and blurred by an amount that grows with the face's size (edge = sqrt(area) // 20: erode
by 2 * edge, Gaussian blur of side 2 * edge + 1), so the face fades into the picture
instead of showing the crop's square edge. A1111 can use a face-parsing network for this
mask; without one it is this square mask, which is what facexlib does without parsing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .face_align import invert_affine, warp_affine


def erode(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Grey erosion of [B, 1, H, W] by a kernel x kernel square anchored at its centre
    (OpenCV's anchor for even sides); the picture's border does not erode."""
    if kernel <= 1:
        return mask
    before = kernel // 2
    after = kernel - 1 - before
    padded = F.pad(mask, (before, after, before, after), value=float("inf"))
    return -F.max_pool2d(-padded, kernel, stride=1)


def gaussian_blur(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Gaussian blur of [B, 1, H, W] with an odd side `kernel` and OpenCV's sigma for it
    (0.3 * ((k - 1) / 2 - 1) + 0.8), mirrored at the border (reflect-101)."""
    if kernel <= 1:
        return mask
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = torch.arange(kernel, dtype=torch.float32, device=mask.device) - (kernel - 1) / 2
    weights = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    weights = weights / weights.sum()
    pad = kernel // 2
    mode = "reflect" if min(mask.shape[-2:]) > pad else "replicate"
    out = F.conv2d(F.pad(mask, (pad, pad, 0, 0), mode=mode), weights.reshape(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, pad, pad), mode=mode), weights.reshape(1, 1, -1, 1))


def soft_mask(matrix, face_size: int, height: int, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the eroded hard mask, the feathered mask), both [1, 1, height, width], of where a face crop lands."""
    inverse = invert_affine(matrix)
    ones = torch.ones(1, 1, face_size, face_size, device=device)
    hard = erode(warp_affine(ones, inverse, (height, width)), 2)
    edge = int(math.sqrt(float(hard.sum()))) // 20
    centre = erode(hard, 2 * edge or 3)  # OpenCV erodes by 3x3 when handed an empty kernel
    return hard, gaussian_blur(centre, 2 * edge + 1)


def paste_face(canvas: torch.Tensor, face: torch.Tensor, matrix) -> torch.Tensor:
    """`canvas` [1, C, H, W] with the restored crop `face` [1, C, S, S] (aligned by the 2x3
    image -> crop `matrix`) blended in through the feathered mask."""
    height, width = canvas.shape[-2:]
    back = warp_affine(face, invert_affine(matrix), (height, width))
    hard, feathered = soft_mask(matrix, face.shape[-1], height, width, canvas.device)
    return feathered * (hard * back) + (1.0 - feathered) * canvas


__all__ = ["erode", "gaussian_blur", "paste_face", "soft_mask"]
