"""A1111's face restoration, start to end: detect, align, restore, paste back, blend.

For each picture: scale it so its shorter side is `detection_size` (640, as A1111 asks
facexlib), find faces with RetinaFace (confidence 0.97, NMS 0.4), drop faces whose eyes
are under `min_eye_distance` pixels apart (side faces, tiny faces), warp each face onto
the 512x512 FFHQ template, run the restorer on it (a callable taking and returning
[1, 3, 512, 512] in -1..1, the range GFPGAN/CodeFormer/RestoreFormer work in), paste the
result back with a feathered mask, and blend the whole with the original by `visibility`
(A1111's extras tab; txt2img and img2img use 1).

Pictures are ComfyUI IMAGE tensors [B, H, W, C], RGB in 0..1. The restorer is handed in,
so this module does not know how it was loaded.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import face_boxes
from .face_align import FACE_SIZE, align_face
from .face_detector import RetinaFace
from .face_paste import paste_face

DETECTION_SIZE = 640
MIN_EYE_DISTANCE = 5.0

Restorer = Callable[[torch.Tensor], torch.Tensor]


def check_settings(visibility: float, confidence: float, detection_size: int) -> None:
    """ValueError naming the setting for values the pipeline cannot use."""
    if not 0.0 <= visibility <= 1.0:
        raise ValueError(f"visibility: {visibility} is outside 0..1; 1 shows the restored faces fully, 0 not at all.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: {confidence} is outside (0, 1); A1111 uses 0.97.")
    if detection_size < 64:
        raise ValueError(f"detection_size: {detection_size} is under 64 pixels; A1111 uses 640.")


@torch.no_grad()
def detect_faces(detector: RetinaFace, image: torch.Tensor, *, detection_size: int = DETECTION_SIZE,
                 confidence: float = face_boxes.DEFAULT_CONFIDENCE, nms_threshold: float = face_boxes.DEFAULT_NMS,
                 min_eye_distance: float = MIN_EYE_DISTANCE) -> list[face_boxes.Face]:
    """The faces of one picture [1, 3, H, W] (RGB 0..1), in its own pixel coordinates."""
    height, width = image.shape[-2:]
    scale = min(height, width) / detection_size
    det_h, det_w = int(height / scale), int(width / scale)
    device = next(detector.parameters()).device
    dtype = next(detector.parameters()).dtype
    resized = image.to(device, torch.float32)
    if (det_h, det_w) != (height, width):
        resized = F.interpolate(resized, size=(det_h, det_w), mode="bicubic", align_corners=False,
                                antialias=True).clamp(0, 1)
    config = detector.config
    mean = torch.tensor(config.mean_bgr, device=device).reshape(1, 3, 1, 1)
    bgr = resized.flip(1) * 255.0 - mean  # the detector was trained on OpenCV's BGR 0..255
    offsets, scores, marks = detector(bgr.to(dtype))
    priors = face_boxes.prior_boxes(det_h, det_w, config.min_sizes, config.steps).to(device)
    boxes = face_boxes.decode_boxes(offsets[0].float(), priors, config.variances)
    boxes = boxes * torch.tensor([det_w, det_h, det_w, det_h], device=device)
    landmarks = face_boxes.decode_landmarks(marks[0].float(), priors, config.variances)
    landmarks = landmarks * torch.tensor([det_w, det_h] * 5, device=device)
    faces = face_boxes.select(boxes.cpu(), scores[0, :, 1].float().cpu(), landmarks.cpu(), confidence, nms_threshold)
    faces = [face.scaled(scale) for face in faces]
    return [face for face in faces if face.eye_distance >= min_eye_distance]


@torch.no_grad()
def restore_picture(picture: torch.Tensor, faces: list[face_boxes.Face], restore: Restorer) -> torch.Tensor:
    """[1, 3, H, W] with every face restored and pasted back (in detection order)."""
    result = picture.float()
    for face in faces:
        crop, matrix = align_face(picture.float(), face.landmarks, FACE_SIZE)
        restored = restore(crop * 2.0 - 1.0)
        restored = ((restored.float().clamp(-1.0, 1.0) + 1.0) / 2.0).to(result.device)
        result = paste_face(result, restored, matrix)
    return result


def restore_faces(images: torch.Tensor, detector: RetinaFace, restore: Restorer, *, visibility: float = 1.0,
                  detection_size: int = DETECTION_SIZE, confidence: float = face_boxes.DEFAULT_CONFIDENCE,
                  nms_threshold: float = face_boxes.DEFAULT_NMS, min_eye_distance: float = MIN_EYE_DISTANCE,
                  on_picture: Optional[Callable[[int, int], None]] = None) -> tuple[torch.Tensor, list[int]]:
    """(IMAGE [B, H, W, C] with faces restored, the number of faces found per picture).

    Pictures without faces come back unchanged; an alpha channel, if any, is kept as is."""
    check_settings(visibility, confidence, detection_size)
    out, counts = [], []
    for index in range(images.shape[0]):
        picture = images[index: index + 1, :, :, :3].permute(0, 3, 1, 2).float()
        faces = detect_faces(detector, picture, detection_size=detection_size, confidence=confidence,
                             nms_threshold=nms_threshold, min_eye_distance=min_eye_distance)
        counts.append(len(faces))
        restored = restore_picture(picture, faces, restore) if faces else picture
        if faces and visibility < 1.0:
            restored = picture * (1.0 - visibility) + restored.to(picture.device) * visibility
        rgb = restored.clamp(0, 1).permute(0, 2, 3, 1).to(images.device, images.dtype)
        if images.shape[-1] > 3:
            rgb = torch.cat([rgb, images[index: index + 1, :, :, 3:]], dim=-1)
        out.append(rgb)
        if on_picture is not None:
            on_picture(index + 1, images.shape[0])
    return torch.cat(out, dim=0), counts


__all__ = ["DETECTION_SIZE", "MIN_EYE_DISTANCE", "check_settings", "detect_faces", "restore_faces",
           "restore_picture"]
