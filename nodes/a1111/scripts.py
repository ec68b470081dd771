"""A1111's `script_name` / `script_args`: the built-in "SD upscale" script.

A1111 runs a script instead of the plain img2img pass. The one the pack
offers is "SD upscale" (img2img only, as in A1111), whose arguments are
`[info, overlap, upscaler, scale_factor]`: `upscaler` an index into
`GET /sdapi/v1/upscalers` (A1111's `shared.sd_upscalers`) or, as A1111 also
accepts, that list's name. A1111 takes the init image at its own size,
upscales it (upscaler "None" leaves it as it is), cuts tiles of the request's
width x height and redraws them; one combined picture per `n_iter`. Here that
is one DSSDUpscale node. Any other script is A1111's 422 "Script ... not found".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .errors import ApiError, unsupported

SD_UPSCALE = "sd upscale"
DEFAULT_ARGS = ("", 64, 0, 2.0)  # A1111's UI defaults: info, overlap, upscaler index (None), scale factor
# A1111's plain upscalers -> DSSDUpscale's filter ("None": no enlargement, so any filter).
FILTERS = {"None": "lanczos", "Lanczos": "lanczos", "Nearest": "nearest-exact"}


@dataclass(frozen=True)
class SDUpscale:
    overlap: int
    upscaler: str  # the name from /sdapi/v1/upscalers
    scale: float  # 1.0 when the upscaler is "None"
    upscale_model: Optional[str]  # a models/upscale_models file, else None

    def infotext(self) -> dict[str, Any]:
        return {"SD upscale overlap": self.overlap, "SD upscale upscaler": self.upscaler}


def _number(value: Any, where: str, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and int(value) != value):
        kind = "a whole number" if integer else "a number"
        raise unsupported(f"{where}: {value!r} is not {kind}")
    return int(value) if integer else float(value)


def _upscaler(value: Any, names: Sequence[str]) -> str:
    if isinstance(value, str):
        for name in names:
            if name.lower() == value.lower():
                return name
        raise unsupported(f"script_args[2]: upscaler {value!r} is not one of {list(names)} (GET /sdapi/v1/upscalers)")
    index = _number(value, "script_args[2] (upscaler)", integer=True)
    if not 0 <= index < len(names):
        raise unsupported(f"script_args[2]: upscaler index {index} is not one of 0..{len(names) - 1} "
                          f"({', '.join(names)}; GET /sdapi/v1/upscalers lists them in this order)")
    return names[index]


def parse(script_name: Optional[str], script_args: Sequence[Any], kind: str,
          upscale_models: Sequence[str]) -> Optional[SDUpscale]:
    """The script a request asks for (None: none), or the A1111 error for it."""
    if not script_name:
        return None
    if script_name.strip().lower() != SD_UPSCALE or kind != "img2img":
        raise ApiError(422, f"Script '{script_name}' not found")
    args = list(script_args or [])
    if len(args) > len(DEFAULT_ARGS):
        raise unsupported(f"script_args: SD upscale takes [info, overlap, upscaler, scale_factor], got {len(args)} values")
    args += list(DEFAULT_ARGS[len(args):])
    overlap = _number(args[1], "script_args[1] (overlap)", integer=True)
    if not 0 <= overlap <= 2048:
        raise unsupported(f"script_args[1]: overlap {overlap} must be from 0 to 2048 pixels")
    upscaler = _upscaler(args[2], [*FILTERS, *upscale_models])
    scale = _number(args[3], "script_args[3] (scale_factor)", integer=False)
    if not 1.0 <= scale <= 4.0:
        raise unsupported(f"script_args[3]: scale_factor {scale} must be from 1 to 4 (A1111's range)")
    if upscaler == "None":
        scale = 1.0
    return SDUpscale(overlap, upscaler, scale, None if upscaler in FILTERS else upscaler)


def check_request(req, script: SDUpscale) -> None:
    """What SD upscale cannot combine with, named (A1111 would silently drop it)."""
    if req.mask:
        raise unsupported("mask: the SD upscale script redraws the whole picture; send no mask, or no script")
    if any(name.lower() == "controlnet" for name in (req.alwayson_scripts or {})):
        raise unsupported("alwayson_scripts.controlnet: not supported with the SD upscale script")
    if script.overlap * 2 >= min(req.width, req.height):
        raise unsupported(f"script_args[1]: overlap {script.overlap} must be under half the tile "
                          f"({req.width}x{req.height}, the request's width and height)")


def add_node(g, script: SDUpscale, *, image, model, positive, negative, vae, width: int, height: int,
             denoise: float, seed: int, steps: int, cfg: float, sampler: str, schedule: str) -> str:
    """The DSSDUpscale node (with UpscaleModelLoader when the upscaler is a model file)."""
    inputs: dict[str, Any] = {}
    if script.upscale_model:
        inputs["upscale_model"] = [g.add("UpscaleModelLoader", model_name=script.upscale_model), 0]
    return g.add(
        "DSSDUpscale", image=image, model=model, positive=positive, negative=negative, vae=vae,
        scale=script.scale, upscale_method=FILTERS.get(script.upscaler, "lanczos"), tile_width=width,
        tile_height=height, overlap=script.overlap, denoise=denoise, seed=seed, steps=steps, cfg=cfg,
        sampler_name=sampler, schedule=schedule, **inputs,
    )
