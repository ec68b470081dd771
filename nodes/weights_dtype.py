"""The weight-precision widget every loader node shares, and what "auto" means.

Loaders put weights on ComfyUI's offload device and ComfyUI moves them to its
compute device when a run needs them, so "auto" is decided by the compute
device: float16 on a GPU (the usual inference precision), float32 on a CPU
(which has no fast float16 kernels).
"""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge

DTYPES = ["auto", "float32", "float16", "bfloat16"]


def dtype_input(tooltip_extra: str = "") -> io.Combo.Input:
    return io.Combo.Input(
        "dtype",
        options=DTYPES,
        default="auto",
        tooltip="Weight precision. auto: float16 on a GPU, float32 on the CPU." + (" " + tooltip_extra if tooltip_extra else ""),
    )


def check_dtype(dtype: str) -> bool | str:
    """validate_inputs' answer for the widget (ComfyUI 0.3.75 does not check V3 combos)."""
    return True if dtype in DTYPES else f"dtype: '{dtype}' is not one of {DTYPES}."


def resolve(dtype: str) -> str:
    """The concrete dtype name for a widget value."""
    if dtype == "auto":
        return "float16" if comfy_bridge.compute_device().type == "cuda" else "float32"
    return dtype
