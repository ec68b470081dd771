"""SDXL's micro-conditioning set on a prompt: size and crop, and the refiner's aesthetic score.

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


MAX_AESTHETIC_SCORE = 1000.0


def with_aesthetic_score(conditioning: Conditioning, aesthetic_score: float) -> Conditioning:
    """A copy of an SDXL refiner prompt carrying its aesthetic score.

    The refiner was trained with an aesthetic score (about 0 to 10) as one of
    its five time ids; diffusers passes aesthetic_score (positive, default 6)
    and negative_aesthetic_score (default 2.5), ComfyUI's
    CLIPTextEncodeSDXLRefiner has `ascore` on each prompt. Here each prompt
    carries its own, so the negative prompt gets its own node; a prompt
    without one gets diffusers' default for its side. Other families have no
    such input: setting it there is a mistake, not something to ignore.
    """
    family = families.of(conditioning)
    if not family.aesthetic_score:
        raise ValueError(
            f"conditioning: the aesthetic score is an SDXL refiner input, but this prompt was encoded with the "
            f"{family.short_label} text encoder, whose model takes none: leave Diffusers SDXL Refiner Aesthetic "
            "Score out for this model, or encode the prompt with the refiner's TEXT_ENCODER"
        )
    value = aesthetic_score
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= MAX_AESTHETIC_SCORE:
        raise ValueError(
            f"aesthetic_score must be a number from 0 to {MAX_AESTHETIC_SCORE:g} (the refiner was trained on "
            f"about 0 to 10; 6 is diffusers' default for a positive prompt, 2.5 for a negative one), got {value!r}"
        )
    size = dict(conditioning.size_conditioning or {})
    size["aesthetic_score"] = float(value)
    return replace(conditioning, size_conditioning=size)
