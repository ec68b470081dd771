"""From RetinaFace's raw outputs to faces: prior boxes, offset decoding, threshold and NMS.

RetinaFace predicts, for every prior (anchor) box, offsets relative to that prior.
The priors tile each pyramid level (stride 8, 16, 32) with two square anchors per
location, in the order the heads flatten their outputs (row, column, anchor), as
normalised (cx, cy, w, h). Decoding follows the SSD convention with variances
(0.1, 0.2): centre = prior centre + offset * 0.1 * prior size, size = prior size *
exp(offset * 0.2); each landmark = prior centre + offset * 0.1 * prior size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import torch

DEFAULT_CONFIDENCE = 0.97  # facexlib's FaceRestoreHelper asks the detector for this
DEFAULT_NMS = 0.4


@dataclass
class Face:
    """One detected face in pixel coordinates of the image the detector saw."""

    box: tuple  # x1, y1, x2, y2
    score: float
    landmarks: list  # five (x, y): eye, eye, nose, mouth corner, mouth corner (image-left first)

    def scaled(self, factor: float) -> "Face":
        return Face(tuple(v * factor for v in self.box), self.score,
                    [(x * factor, y * factor) for x, y in self.landmarks])

    @property
    def eye_distance(self) -> float:
        (x0, y0), (x1, y1) = self.landmarks[0], self.landmarks[1]
        return math.hypot(x0 - x1, y0 - y1)


def prior_boxes(height: int, width: int, min_sizes, steps) -> torch.Tensor:
    """[N, 4] normalised (cx, cy, w, h) priors for an image of height x width."""
    anchors = []
    for sizes, step in zip(min_sizes, steps):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        for i, j in product(range(rows), range(cols)):
            for size in sizes:
                anchors.append(((j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height))
    return torch.tensor(anchors, dtype=torch.float32).reshape(-1, 4)


def decode_boxes(offsets: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """[N, 4] normalised (x1, y1, x2, y2) from [N, 4] offsets."""
    centre = priors[:, :2] + offsets[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(offsets[:, 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def decode_landmarks(offsets: torch.Tensor, priors: torch.Tensor, variances=(0.1, 0.2)) -> torch.Tensor:
    """[N, 10] normalised (x, y) * 5 from [N, 10] offsets."""
    points = priors[:, None, :2] + offsets.reshape(-1, 5, 2) * variances[0] * priors[:, None, 2:]
    return points.reshape(-1, 10)


def select(boxes: torch.Tensor, scores: torch.Tensor, landmarks: torch.Tensor, confidence: float,
           nms_threshold: float) -> list[Face]:
    """Faces above `confidence`, best first, overlaps above `nms_threshold` IoU suppressed.

    `boxes` and `landmarks` are in pixels here."""
    from torchvision.ops import nms

    keep = scores > confidence
    boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
    if boxes.shape[0] == 0:
        return []
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores, landmarks = boxes[order], scores[order], landmarks[order]
    kept = nms(boxes.float(), scores.float(), nms_threshold)
    return [
        Face(tuple(boxes[k].tolist()), float(scores[k]), [tuple(p) for p in landmarks[k].reshape(5, 2).tolist()])
        for k in kept.tolist()
    ]


__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_NMS", "Face", "decode_boxes", "decode_landmarks", "prior_boxes", "select"]
