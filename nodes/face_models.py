"""Face-restoration and face-detection models from ComfyUI's folders.

- models/facerestore_models: GFPGAN, RestoreFormer and (with ComfyUI's optional
  `spandrel_extra_arches`) CodeFormer, loaded by spandrel (ComfyUI's own model loader
  for upscalers) from the state dict. The folder other ComfyUI face nodes use too.
- models/facedetection: facexlib's RetinaFace detector (detection_Resnet50_Final.pth or
  detection_mobilenet0.25_Final.pth), read into the pack's own RetinaFace.

The last model of each kind stays loaded (keyed by path and modification time), so a
queue of prompts does not re-read the file each time.
"""
from __future__ import annotations

import inspect
import logging
import os
import threading
from typing import Callable

import torch

from . import comfy_bridge
from .engine.face_detector import RetinaFace, from_state_dict
from .a1111.listings import CODEFORMER_HINT, pick_detector
from .engine.face_weights import SUFFIXES, read_state_dict

log = logging.getLogger(__name__)

RESTORERS = comfy_bridge.ModelFolder("facerestore_models", "restorer_name", SUFFIXES, None,
                                     "face-restoration model")
DETECTORS = comfy_bridge.ModelFolder("facedetection", "detector_name", SUFFIXES, None, "face detector")
DETECTOR_FILE = "detection_Resnet50_Final.pth"  # facexlib's release, the one A1111 uses

_lock = threading.Lock()
_loaded: dict[str, tuple] = {}  # kind -> (path, mtime, model)


def register() -> None:
    for folder in (RESTORERS, DETECTORS):
        folder.register()


def preferred_detector(names: list[str]) -> str | None:
    """The detector to use when none is named (A1111's ResNet-50, safetensors first)."""
    return pick_detector(names) if names else None


def _cached(kind: str, path: str, load: Callable[[], object]):
    stamp = os.path.getmtime(path)
    with _lock:
        held = _loaded.get(kind)
        if held and held[0] == path and held[1] == stamp:
            return held[2]
    model = load()
    with _lock:
        _loaded[kind] = (path, stamp, model)
    return model


def detector(name: str) -> RetinaFace:
    """The RetinaFace of a listed models/facedetection file, on ComfyUI's device."""
    path = DETECTORS.path(name)
    model = _cached("detector", path, lambda: from_state_dict(read_state_dict(path, "detector_name"), name))
    return model.to(comfy_bridge.compute_device())


def offload() -> None:
    """Move the held models to ComfyUI's offload device after a run, so they keep no VRAM
    between prompts (A1111's face_restoration_unload; the files stay read)."""
    device = comfy_bridge.offload_device()
    with _lock:
        held = [entry[2] for entry in _loaded.values()]
    for model in held:
        module = getattr(model, "model", model)  # a spandrel descriptor or the detector itself
        module.to(device)


def _spandrel_loader():
    from spandrel import MAIN_REGISTRY, ModelLoader

    try:  # ComfyUI adds these itself when installed; adding twice is refused, which is fine
        from spandrel_extra_arches import EXTRA_REGISTRY

        MAIN_REGISTRY.add(*EXTRA_REGISTRY)
    except Exception:
        pass
    return ModelLoader()


def _load_restorer(path: str, name: str):
    from spandrel import UnsupportedModelError

    state = read_state_dict(path, "restorer_name")
    try:
        descriptor = _spandrel_loader().load_from_state_dict(state)
    except UnsupportedModelError:
        if "codeformer" in name.lower() or any(k.startswith("position_emb") for k in state):
            raise ValueError(f"restorer_name: '{name}' looks like CodeFormer. {CODEFORMER_HINT}.") from None
        raise ValueError(
            f"restorer_name: '{name}' is not a face-restoration model spandrel can load (GFPGAN, "
            "RestoreFormer, CodeFormer); put GFPGANv1.4.pth or codeformer.pth in models/facerestore_models"
        ) from None
    if descriptor.purpose != "FaceSR":
        raise ValueError(
            f"restorer_name: '{name}' is a {descriptor.architecture.name} {descriptor.purpose} model, not a face "
            "restorer; upscalers belong in models/upscale_models (Load Upscale Model)"
        )
    descriptor.model.eval()
    return descriptor


def restorer(name: str, codeformer_weight: float = 0.5) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """(a callable restoring [1, 3, 512, 512] crops in -1..1, the architecture's name) for a listed file.

    GFPGAN is called as A1111 calls it (return_rgb=False), CodeFormer with its fidelity weight
    (A1111's code_former_weight) and AdaIN colour correction; the decoders' random noise is
    drawn from a fixed seed, so the same picture restores the same way every run."""
    path = RESTORERS.path(name)
    descriptor = _cached("restorer", path, lambda: _load_restorer(path, name))
    device = comfy_bridge.compute_device()
    model = descriptor.model.to(device)
    accepted = inspect.signature(model.forward).parameters
    kwargs: dict = {}
    for key, value in (("weight", codeformer_weight), ("w", codeformer_weight), ("adain", True),
                       ("return_rgb", False)):
        if key in accepted and not (key == "w" and "weight" in accepted):
            kwargs[key] = value

    def run(crop: torch.Tensor) -> torch.Tensor:
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            out = model(crop.to(device, torch.float32), **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out

    return run, descriptor.architecture.name


__all__ = ["CODEFORMER_HINT", "DETECTORS", "DETECTOR_FILE", "RESTORERS", "detector", "offload",
           "preferred_detector", "register", "restorer"]
