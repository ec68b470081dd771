"""Reading one component's tensors from a safetensors file, fp8 files included.

Flux and SD3 weights are often distributed in 8-bit float (`float8_e4m3fn`,
e.g. t5xxl_fp8_e4m3fn.safetensors, flux1-dev-fp8.safetensors) to halve their
size. Two forms exist:

* plain fp8: the weight tensors are float8 values, used as they are;
* ComfyUI's "scaled" fp8: each quantized linear layer also carries a float32
  `<layer>.scale_weight` (and sometimes `<layer>.scale_input`), and the file a
  marker tensor `scaled_fp8`. The real weight is `weight.float() * scale_weight`
  (ComfyUI's ops.py dequantizes the same way). Newer ComfyUI files name the
  scale `<layer>.weight_scale`; it means the same.

diffusers' modules compute in the pack's compute dtype, so every float8
tensor is dequantized on load (to float32, times its scale, then to the
compute dtype) and the scale/marker tensors are dropped. The loss against the
original weights is the fp8 rounding the file already has: nothing is
added here.
"""
from __future__ import annotations

import torch

from .float8_storage import FLOAT8_DTYPES

# Tensors that describe the quantization, not weights of the model.
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale", ".scale_input", ".input_scale")
_MARKERS = ("scaled_fp8", "comfy_quant")
_KEYS_PER_OPENING = 64


def is_quantization_key(key: str) -> bool:
    return key.endswith(_SCALE_SUFFIXES) or key.rsplit(".", 1)[-1] in _MARKERS


def _scale_of(key: str, scales: dict):
    """The scale of weight `key` (<layer>.weight), if the file has one."""
    if not key.endswith(".weight"):
        return None
    layer = key[: -len(".weight")]
    return scales.get(layer + ".scale_weight", scales.get(layer + ".weight_scale"))


def dequantize(tensor: torch.Tensor, scale, dtype: torch.dtype) -> torch.Tensor:
    """A stored tensor in the compute dtype: float8 values times their scale, others cast."""
    if tensor.dtype in FLOAT8_DTYPES:
        value = tensor.to(torch.float32)
        if scale is not None:
            scale = scale.to(torch.float32)
            if scale.ndim == 1 and value.ndim == 2 and scale.numel() == value.shape[0]:
                scale = scale[:, None]  # per-output-channel scales
            value = value * scale
        return value.to(dtype)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def read_component(path: str, prefix: str, dtype: torch.dtype, *, exclude: tuple = (),
                   keep_float8: bool = False) -> dict:
    """The tensors under `prefix`, the prefix removed, dequantized and cast to `dtype`.

    keep_float8: plain float8 tensors (no scale) are returned as stored, for
    a module that keeps them so (float8_storage); scaled ones are still
    dequantized, their scale being no part of the module.

    exclude: prefixes (relative to `prefix`) whose tensors are not read, e.g.
    another component's keys when `prefix` is "".

    The file is memory-mapped; keys are read in small groups, each through its
    own opening, so the resident file pages stay one group's worth (the same
    reason as `single_file._load_tensors`).
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as fh:
        keys = [k for k in fh.keys() if k.startswith(prefix)]
        if exclude:
            keys = [k for k in keys if not k[len(prefix):].startswith(exclude)]
        scales = {k[len(prefix):]: fh.get_tensor(k) for k in keys if is_quantization_key(k)}
    weights = [k for k in keys if not is_quantization_key(k)]
    out = {}
    for start in range(0, len(weights), _KEYS_PER_OPENING):
        with safe_open(path, framework="pt", device="cpu") as fh:
            for key in weights[start:start + _KEYS_PER_OPENING]:
                short = key[len(prefix):]
                tensor, scale = fh.get_tensor(key), _scale_of(short, scales)
                kept = keep_float8 and scale is None and tensor.dtype in FLOAT8_DTYPES
                out[short] = tensor if kept else dequantize(tensor, scale, dtype)
    return out


def quantization_of(path: str) -> str:
    """"scaled fp8", "fp8" or "" for a file, from its dtypes and scale keys (header only)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as fh:
        keys = list(fh.keys())
        if any(is_quantization_key(k) for k in keys):
            return "scaled fp8"
        if any(fh.get_slice(k).get_dtype().startswith("F8") for k in keys):
            return "fp8"
    return ""
