"""SDXL's size and crop micro-conditioning, set on a prompt.

SDXL (and its refiner) was trained with the source image's original size and
crop offset as extra inputs, and the base also with the target size. Telling
it a small original size or a crop gives lower-resolution or cropped-looking
pictures; that is why diffusers exposes original_size, crops_coords_top_left
and target_size (and their negative_* twins), A1111 sets them from the image
size, and ComfyUI has CLIPTextEncodeSDXL. Here they are set on a prompt's
DS_CONDITIONING, so the positive and the negative prompt each carry their
own, as diffusers' negative_* parameters do.

Sizes are stored as diffusers orders them: (height, width) and crop (top, left).
"""
from __future__ import annotations

from dataclasses import replace

from . import families
from .components import Conditioning

MAX_SIDE = 16384


def _check_side(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIDE:
        raise ValueError(f"{name} must be a whole number of pixels from 0 to {MAX_SIDE}, got {value!r}")
    return value


def with_size_conditioning(
    conditioning: Conditioning,
    *,
    original_width: int = 0,
    original_height: int = 0,
    crop_left: int = 0,
    crop_top: int = 0,
    target_width: int = 0,
    target_height: int = 0,
) -> Conditioning:
    """A copy of an SDXL prompt with its size conditioning set.

    0 for a width or height means "the size being generated" (diffusers'
    default when the parameter is left out); the crop is always set.
    """
    if not families.of(conditioning).size_conditioning:
        raise ValueError(
            f"conditioning: size conditioning is an SDXL input, but this prompt was encoded for "
            f"{conditioning.family}; leave this node out for SD1.x models"
        )
    sides = {
        "original_width": original_width, "original_height": original_height, "crop_left": crop_left,
        "crop_top": crop_top, "target_width": target_width, "target_height": target_height,
    }
    for name, value in sides.items():
        _check_side(name, value)
    for prefix in ("original", "target"):
        width, height = sides[f"{prefix}_width"], sides[f"{prefix}_height"]
        if (width == 0) != (height == 0):
            raise ValueError(
                f"{prefix}_width and {prefix}_height must both be set or both be 0 (the size being "
                f"generated), got {width} x {height}"
            )
    size = dict(conditioning.size_conditioning or {})
    size["crop"] = (crop_top, crop_left)
    if original_width:
        size["original_size"] = (original_height, original_width)
    if target_width:
        size["target_size"] = (target_height, target_width)
    return replace(conditioning, size_conditioning=size)
