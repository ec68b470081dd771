"""The A1111 listings that describe the server rather than a model family.

`cmd-flags`, `hypernetworks`, `realesrgan-models` and `face-restorers` in
A1111's shapes. What they list comes from ComfyUI's model folders (by name,
through folder_paths): a face-restoration model in models/facerestore_models
(and, for restore_faces, the RetinaFace detector in models/facedetection),
Real-ESRGAN files among models/upscale_models. Hypernetworks are an SD1-era
format the pack does not load, so that list is always empty.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence

FACE_RESTORE_FOLDER = "facerestore_models"
_FACE_KINDS = (("codeformer", "CodeFormer"), ("gfpgan", "GFPGAN"), ("restoreformer", "RestoreFormer"))
_SCALE = re.compile(r"(?:^|[^0-9])(?:x([1-8])|([1-8])x)(?:[^0-9]|$)", re.IGNORECASE)


def face_restorer_name(file_name: str) -> str:
    """A1111's restorer name for a model file ("CodeFormer", "GFPGAN", else the file's stem)."""
    lowered = file_name.lower()
    for key, name in _FACE_KINDS:
        if key in lowered:
            return name
    return file_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def face_restorers(files: Sequence[str]) -> list[dict]:
    """GET /sdapi/v1/face-restorers: [{name, cmd_dir}] per model file in models/facerestore_models."""
    return [{"name": face_restorer_name(f), "cmd_dir": f"models/{FACE_RESTORE_FOLDER}/{f}"} for f in files]


def realesrgan_models(upscale_files: Sequence[str]) -> list[dict]:
    """GET /sdapi/v1/realesrgan-models: the Real-ESRGAN files among models/upscale_models."""
    out = []
    for name in upscale_files:
        if not any(key in name.lower() for key in ("esrgan", "realesr")):
            continue
        found = _SCALE.search(name.rsplit("/", 1)[-1])
        scale = int(found.group(1) or found.group(2)) if found else 4
        out.append({"name": name.rsplit("/", 1)[-1].rsplit(".", 1)[0], "path": name, "scale": scale})
    return out


def cmd_flags(comfy_args: Any, folder: Callable[[str], list[str]]) -> dict:
    """GET /sdapi/v1/cmd-flags: A1111's flag names, answered for this ComfyUI server.

    Only flags with a meaning here are listed: where models live, whether the
    API is on (always), the listen address and port ComfyUI was started with.
    """

    def arg(name, default=None):
        return getattr(comfy_args, name, default)

    listen = arg("listen", "127.0.0.1")
    return {
        "api": True,
        "nowebui": False,
        "listen": bool(listen) and listen not in ("127.0.0.1", "localhost", "::1"),
        "server_name": listen,
        "port": arg("port", 8188),
        "ckpt_dir": _first(folder("checkpoints")),
        "lora_dir": _first(folder("loras")),
        "embeddings_dir": _first(folder("embeddings")),
        "hypernetwork_dir": None,
        "codeformer_models_path": _first(folder(FACE_RESTORE_FOLDER)),
        "gfpgan_models_path": _first(folder(FACE_RESTORE_FOLDER)),
        "esrgan_models_path": _first(folder("upscale_models")),
        "realesrgan_models_path": _first(folder("upscale_models")),
        "controlnet_dir": _first(folder("controlnet")),
        "cpu": bool(arg("cpu", False)),
        "lowvram": bool(arg("lowvram", False)),
        "no_half": bool(arg("force_fp32", False)),
        "disable_safe_unpickle": False,
    }


def _first(paths: list[str]):
    return paths[0] if paths else None


DETECTOR_FOLDER = "facedetection"
DETECTOR_FILE = "detection_Resnet50_Final.pth"  # facexlib's RetinaFace release, A1111's detector
DEFAULT_RESTORER = "CodeFormer"  # A1111's face_restoration_model default
CODEFORMER_HINT = (
    "CodeFormer's loader is not in spandrel's main package (its licence is non-commercial): install "
    "spandrel_extra_arches into ComfyUI's Python, or put GFPGANv1.4.pth in models/facerestore_models"
)


def restore_faces_refusal(files: Sequence[str], detectors: Sequence[str] = ()) -> Optional[str]:
    """Why restore_faces cannot run, naming what is missing and where it goes; None when it can."""
    missing = []
    if not files:
        missing.append(f"a face-restoration model (GFPGANv1.4.pth, or codeformer.pth with spandrel_extra_arches) "
                       f"in ComfyUI's models/{FACE_RESTORE_FOLDER}")
    if not detectors:
        missing.append(f"a face detector (facexlib's RetinaFace {DETECTOR_FILE}) in ComfyUI's models/{DETECTOR_FOLDER}")
    if not missing:
        return None
    found = ""
    if files:
        found = f" ({', '.join(sorted({face_restorer_name(f) for f in files}))} found in models/{FACE_RESTORE_FOLDER})"
    return (f"restore_faces: needs {' and '.join(missing)}{found}; GET /sdapi/v1/face-restorers lists the "
            "restorers. Put the files there, or send restore_faces false")


def pick_restorer(files: Sequence[str], wanted: Optional[str]) -> str:
    """The file for A1111's face_restoration_model (a restorer name such as "CodeFormer", or a file name).

    A1111's default ("CodeFormer", or none) falls back to the first restorer present, since
    A1111 itself always has CodeFormer; another name that is not present is a ValueError."""
    if not files:
        raise ValueError(restore_faces_refusal(files, ["-"]))
    for f in files:
        if wanted in (f, f.rsplit("/", 1)[-1], f.rsplit("/", 1)[-1].rsplit(".", 1)[0]):
            return f
    for f in files:
        if wanted and face_restorer_name(f).lower() == str(wanted).lower():
            return f
    if wanted in (None, "", DEFAULT_RESTORER):
        return sorted(files)[0]
    names = ", ".join(f"{face_restorer_name(f)} ({f})" for f in files)
    raise ValueError(f"face_restoration_model: {wanted!r} is not in models/{FACE_RESTORE_FOLDER}; present: {names}")


def pick_detector(files: Sequence[str]) -> str:
    """facexlib's ResNet-50 detector when present (A1111's), else the first; a .safetensors
    copy before a .pth of the same kind (safetensors first)."""
    return sorted(files, key=lambda f: ("resnet50" not in f.lower(), not f.lower().endswith(".safetensors"), f))[0]


__all__ = ["CODEFORMER_HINT", "DEFAULT_RESTORER", "DETECTOR_FILE", "DETECTOR_FOLDER", "FACE_RESTORE_FOLDER", "cmd_flags",
           "face_restorer_name", "face_restorers", "pick_detector", "pick_restorer", "realesrgan_models",
           "restore_faces_refusal"]
