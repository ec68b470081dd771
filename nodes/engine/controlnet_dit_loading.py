"""Load transformer ControlNets (Flux.1, SD3 / SD3.5) from diffusers folders, offline.

A diffusers ControlNet folder names its class in config.json: `FluxControlNetModel`
(InstantX / Shakker-Labs Union, XLabs in diffusers form) or `SD3ControlNetModel`
(InstantX SD3, Stability's SD3.5 ControlNets). That name is the family, so no
tensor shape has to be guessed; weights are read through
`from_pretrained(local_files_only=True)` (safetensors first, as diffusers does).
Single files (no config.json) are read by `controlnet_dit_files`, which infers the
config from the tensor shapes; `controlnet_loading.load_controlnet` sends them there.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from .components import FLUX, SD3

FOLDER_CLASSES = {"FluxControlNetModel": FLUX, "SD3ControlNetModel": SD3}


def folder_class(path: str) -> Optional[str]:
    """The `_class_name` of a ControlNet folder's config.json (None when it has none)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as fh:
            name = json.load(fh).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def is_dit_controlnet_folder(path: str) -> bool:
    return folder_class(path) in FOLDER_CLASSES


def load_dit_module(path: str, name: str, torch_dtype: torch.dtype):
    """(family, module) of a Flux / SD3 ControlNet folder; ModelLoadError when it is damaged."""
    import diffusers

    from .families import ModelLoadError

    cls_name = folder_class(path)
    family = FOLDER_CLASSES[cls_name]
    try:
        module = getattr(diffusers, cls_name).from_pretrained(path, local_files_only=True, torch_dtype=torch_dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"ControlNet folder {name!r} ({cls_name}) could not be loaded ({exc}). Its files are missing or "
            "damaged: download the folder again."
        ) from exc
    return family, module
