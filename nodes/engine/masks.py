"""Mask helpers for inpainting: shape checks, resize, grow, feather, crop boxes.

ComfyUI's MASK is [B, H, W] float 0..1 with 1 = "change this". These helpers
keep that convention and stay in torch (no PIL round trip), so soft masks keep
their in-between values and nothing is quantised to 8 bits on the way.

- `grow` dilates (or, negative, erodes) by alternating 3x3 square and cross
  max-pools: each pair adds about one pixel in every direction and the result
  is an octagon, close to a disc, instead of the square a single big max-pool
  gives. It works on soft masks too (grey-scale dilation).
- `blur` is A1111's mask blur: a Gaussian with sigma = the blur value and a
  kernel of 2 * int(2.5 * sigma + 0.5) + 1 taps (cv2.GaussianBlur as A1111
  calls it), reflect-padded at the borders.
- `to_latent_size` averages each VAE block (area interpolation), so a soft
  edge stays soft at latent resolution and a hard mask aligned to the 8-pixel
  grid stays exactly 0/1, which is what diffusers' nearest resize gives for
  such a mask.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def as_mask_batch(mask: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """A MASK as float32 [B, H, W]; [H, W] and [B, 1, H, W] are accepted."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{what} must be a MASK tensor [batch, height, width], got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None]
    elif mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"{what} must be a MASK [batch, height, width], got shape {tuple(mask.shape)}")
    return mask.float().clamp(0.0, 1.0)


def match_size(mask: torch.Tensor, height: int, width: int, what: str = "mask") -> torch.Tensor:
    """Resize [B,H,W] to the image size (bilinear), saying so in the log."""
    if tuple(mask.shape[-2:]) == (height, width):
        return mask
    logger.warning(
        "%s is %dx%d but the image is %dx%d: resizing the mask to the image (bilinear)",
        what, int(mask.shape[-1]), int(mask.shape[-2]), width, height,
    )
    return F.interpolate(mask[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


def match_batch(mask: torch.Tensor, batch: int, what: str = "mask", against: str = "image") -> torch.Tensor:
    """One mask for the whole batch, or one per image; anything else is an error."""
    n = int(mask.shape[0])
    if n == batch:
        return mask
    if n == 1:
        return mask.expand(batch, -1, -1)
    raise ValueError(
        f"{what} has a batch of {n} masks but the {against} batch has {batch} images: "
        f"give one mask for all images or exactly one per image (batch {batch})"
    )


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (pixels > 0) or erode (pixels < 0) [B,H,W] by about `pixels`."""
    pixels = int(pixels)
    if pixels == 0:
        return mask
    x = mask[:, None]
    if pixels < 0:
        x = 1.0 - x
    for i in range(abs(pixels)):
        if i % 2 == 0:
            x = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            # A cross-shaped grey dilation: max over the 4-neighbourhood.
            padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
            x = torch.stack(
                [padded[..., 1:-1, 1:-1], padded[..., :-2, 1:-1], padded[..., 2:, 1:-1],
                 padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]]
            ).amax(0)
    if pixels < 0:
        x = 1.0 - x
    return x[:, 0]


def _gaussian_1d(sigma: float) -> torch.Tensor:
    radius = int(2.5 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [N, C, H, W] (A1111's kernel size, reflect borders)."""
    if sigma <= 0:
        return x
    k = _gaussian_1d(float(sigma)).to(x.device, x.dtype)
    r = (k.numel() - 1) // 2
    c = int(x.shape[1])
    h, w = int(x.shape[-2]), int(x.shape[-1])
    mode = "reflect" if r < h and r < w else "replicate"
    x = F.pad(x, (r, r, 0, 0), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode=mode)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Feather [B,H,W] with A1111's mask blur (sigma in pixels; 0 = off)."""
    if sigma <= 0:
        return mask
    return gaussian_blur(mask[:, None], sigma)[:, 0].clamp(0.0, 1.0)


def wide_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian-like blur for large sigmas: on a downscaled copy, then back.

    Used for A1111's "fill" (radii up to 256 px), where the exact kernel does
    not matter and a full-resolution 1,500-tap kernel would be slow.
    """
    if sigma <= 0:
        return x
    h, w = int(x.shape[-2]), int(x.shape[-1])
    factor = max(1, int(sigma // 4))
    if factor > 1:
        small = F.interpolate(x, size=(max(1, math.ceil(h / factor)), max(1, math.ceil(w / factor))), mode="area")
        small = gaussian_blur(small, sigma / factor)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return gaussian_blur(x, sigma)


def to_latent_size(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """[B,H,W] pixel mask -> [B,1,H/f,W/f], each latent the mean of its block."""
    h, w = int(mask.shape[-2]), int(mask.shape[-1])
    return F.interpolate(mask[:, None], size=(h // factor, w // factor), mode="area")


def binarised_latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """diffusers' mask preprocessing: >= 0.5 -> 1, then nearest resize to latent size.

    (VaeImageProcessor(do_binarize=True) followed by F.interpolate in
    prepare_mask_latents.) This is what inpainting UNets were trained with.
    """
    h, w = int(mask.shape[-2]), int(mask.shape[-1])
    hard = (mask >= 0.5).to(mask.dtype)
    return F.interpolate(hard[:, None], size=(h // factor, w // factor))


def bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the non-zero pixels of one [H,W] mask; None if empty."""
    ys = torch.nonzero(mask.amax(dim=1) > 0).flatten()
    xs = torch.nonzero(mask.amax(dim=0) > 0).flatten()
    if ys.numel() == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1
