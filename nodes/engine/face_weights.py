"""Reading face-model weight files: safetensors first, a pickle only as plain tensors.

Face detectors and restorers are mostly released as `.pth` (facexlib's
detection_Resnet50_Final.pth, GFPGANv1.4.pth, codeformer.pth). They are read with
`torch.load(weights_only=True)`, which refuses pickles that carry code; GFPGAN and
CodeFormer training checkpoints nest the weights under `params_ema` / `params`.
"""
from __future__ import annotations

import os

import torch

from .weight_files import load_plain_tensors

SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_NESTED = ("params_ema", "params", "state_dict", "model")


def read_state_dict(path: str, what: str = "face model") -> dict:
    """The tensors of a weight file, un-nested; ValueError naming the file when it cannot be read safely."""
    name = os.path.basename(path)
    if path.lower().endswith((".safetensors", ".sft")):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    data = load_plain_tensors(path, f"{what}: '{name}'")
    for key in _NESTED:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{what}: '{name}' holds no state dict of tensors")
    return data


__all__ = ["SUFFIXES", "read_state_dict"]
