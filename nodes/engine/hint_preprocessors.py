"""Hint images from plain pictures, without downloaded weights.

ControlNets are trained on hint images (edge maps, line art) rather than on
photos. These two preprocessors need nothing but torch, so a workflow works
from any picture on any install:

* `canny_edges`: the Canny detector as OpenCV's `cv2.Canny(gray, low, high)`
  computes it (3x3 Sobel, L1 gradient magnitude, non-maximum suppression in
  four directions, hysteresis between the two thresholds on the 0..255
  scale), which is what lllyasviel's canny annotator runs. OpenCV is not a
  dependency of the pack, hence this implementation.
* `line_art_threshold`: a drawing or scan turned into clean white lines on
  black (the lineart / scribble ControlNets' convention) by a brightness
  threshold.

Both take and return ComfyUI IMAGEs ([B, H, W, C] float 0..1); the output is
white-on-black RGB.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma, as OpenCV's RGB2GRAY.
_LUMA = (0.299, 0.587, 0.114)


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be an IMAGE ([batch, height, width, channels]), got {shape}")


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """IMAGE -> [B, 1, H, W] luma in 0..1 (alpha ignored)."""
    _check_image(image)
    x = image.detach().to(torch.float32).movedim(-1, 1)
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x[:, :3] * weights).sum(dim=1, keepdim=True)


def _as_image(mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] 0/1 -> IMAGE [B, H, W, 3]."""
    return mask.to(torch.float32).movedim(1, -1).repeat(1, 1, 1, 3).contiguous()


def _sobel(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=gray.dtype, device=gray.device)
    kernel = torch.stack([kx, kx.t()])[:, None]
    # OpenCV's default border (BORDER_REFLECT_101) is torch's "reflect".
    mode = "reflect" if min(gray.shape[-2:]) > 1 else "replicate"
    padded = F.pad(gray, (1, 1, 1, 1), mode=mode)
    g = F.conv2d(padded, kernel)
    return g[:, :1], g[:, 1:]


def _non_max_suppression(mag: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Keep a pixel only where it is a maximum across the edge (4 sectors)."""
    padded = F.pad(mag, (1, 1, 1, 1))
    h, w = mag.shape[-2:]

    def shifted(dy: int, dx: int) -> torch.Tensor:
        return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    tan22 = 0.41421356  # tan(22.5 degrees), OpenCV's sector bounds
    horizontal = ay < ax * tan22  # gradient along x: compare left/right
    vertical = ay > ax / tan22  # gradient along y: compare up/down
    same_sign = (gx * gy) > 0
    # OpenCV: along an axis, strictly above the previous neighbour and at
    # least the next one; along a diagonal, strictly above both.
    keep_h = (mag > shifted(0, -1)) & (mag >= shifted(0, 1))
    keep_v = (mag > shifted(-1, 0)) & (mag >= shifted(1, 0))
    keep_d1 = (mag > shifted(-1, -1)) & (mag > shifted(1, 1))  # gx, gy same sign: "\" neighbours
    keep_d2 = (mag > shifted(-1, 1)) & (mag > shifted(1, -1))
    diagonal = torch.where(same_sign, keep_d1, keep_d2)
    keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, diagonal))
    return mag * keep


def _hysteresis(strong: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """Grow the strong edges through 8-connected weak pixels until nothing changes."""
    edges = strong & weak
    while True:
        grown = (F.max_pool2d(edges.to(torch.float32), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


def canny_edges(image: torch.Tensor, low_threshold: float = 100, high_threshold: float = 200) -> torch.Tensor:
    """Canny edge map of an IMAGE: white edges on black, [B, H, W, 3].

    Thresholds are on the 0..255 scale, as in OpenCV and the ControlNet
    annotators: pixels whose gradient is above `high_threshold` start an
    edge, pixels above `low_threshold` continue one.
    """
    low, high = float(low_threshold), float(high_threshold)
    if low < 0 or high < 0:
        raise ValueError(f"low_threshold and high_threshold must be 0 or more, got {low} and {high}")
    if low > high:
        raise ValueError(
            f"low_threshold ({low}) must not be above high_threshold ({high}): swap them "
            "(typical values: 100 and 200)"
        )
    gray = (to_gray(image) * 255.0).round()  # an 8-bit grey image, as OpenCV sees it
    gx, gy = _sobel(gray)
    mag = gx.abs() + gy.abs()  # OpenCV's default L1 magnitude
    thin = _non_max_suppression(mag, gx, gy)
    edges = _hysteresis(thin > high, thin > low)
    return _as_image(edges)


def line_art_threshold(image: torch.Tensor, threshold: float = 0.5, lines_are_dark: bool = True) -> torch.Tensor:
    """Line art from a drawing: white lines on black, [B, H, W, 3].

    lines_are_dark: the picture has dark lines on a light ground (pencil on
    paper), so pixels darker than `threshold` become lines; False for light
    lines on a dark ground (pixels brighter than `threshold`).
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    gray = to_gray(image)
    lines = gray < threshold if lines_are_dark else gray > threshold
    return _as_image(lines)
