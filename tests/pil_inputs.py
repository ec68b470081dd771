"""A user's own pictures for parity tests: PIL images in, as the pipelines' docs show.

diffusers' pipelines take PIL images; ComfyUI's LoadImage turns the same file
into an IMAGE as uint8 / 255 in float32 (LoadImageMask likewise for a MASK).
These helpers make both from one PIL picture, so a test feeds the node graph
and the pipeline the same pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def picture(seed: int = 0, size: int = 64) -> Image.Image:
    """A smooth gradient with noise on top: structure and texture for the VAE."""
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], -1) * 180 + g.integers(0, 75, (size, size, 3))
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def mask_picture(size: int = 64) -> Image.Image:
    """White (repaint) rectangle on black, aligned to the 8-pixel latent grid."""
    m = np.zeros((size, size), np.uint8)
    m[size // 4 : size * 3 // 4, size * 3 // 8 : size * 7 // 8] = 255
    return Image.fromarray(m, "L")


def as_image(*pictures: Image.Image) -> torch.Tensor:
    """PIL -> ComfyUI IMAGE [B,H,W,3], as LoadImage makes it."""
    return torch.stack([torch.from_numpy(np.array(p.convert("RGB")).astype(np.float32) / 255.0) for p in pictures])


def as_mask(picture_: Image.Image) -> torch.Tensor:
    """PIL "L" -> ComfyUI MASK [1,H,W] (1 = repaint)."""
    return torch.from_numpy(np.array(picture_.convert("L")).astype(np.float32) / 255.0)[None]


def random_image(seed: int, height: int = 48, width: int = 40) -> torch.Tensor:
    """A random ComfyUI IMAGE [1,H,W,3] on the 8-bit grid, so its PIL copy (`to_pil`) is the same picture."""
    torch.manual_seed(seed)
    return (torch.rand(1, height, width, 3) * 255).round() / 255


def to_pil(image: torch.Tensor) -> Image.Image:
    """The first picture of a ComfyUI IMAGE as PIL (exact for pictures on the 8-bit grid)."""
    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))
