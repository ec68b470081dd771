"""SD upscale (A1111's "SD upscale" script): enlarge, then redraw tile by tile with img2img.

A picture larger than the model was trained on cannot be redrawn in one
piece (the model repeats its subject, and memory grows with the area). A1111's
script upscales the picture with an ordinary upscaler, cuts it into tiles of
the model's native size that overlap by `overlap` pixels, runs img2img on
each tile at a low denoise, and pastes the tiles back with a soft seam. The
same here, in three parts a node or the A1111 route composes:

- `upscaled_size` / `resize`: the target size (scale times the input, on the
  VAE's 8-pixel grid) and a resampling filter (lanczos as A1111's default).
- `tile_plan` and `blend_weights`: where the tiles go and how they mix.
  Tiles are spread evenly so that neighbours overlap by at least `overlap`
  pixels and the last one ends flush with the picture (A1111 spreads them
  the same way); in an overlap each tile's weight ramps linearly from 0 to 1
  across it, and the weights at every pixel sum to 1.
- `redraw_tiles`: the img2img pass, tile by tile, one seed per tile
  (seed + tile index, as A1111 steps the seed per tile), with a cancel check
  between tiles and step progress across all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import vae_codec
from .sampling import sample

RESIZE_METHODS = ("lanczos", "bicubic", "bilinear", "nearest-exact", "area")
GRID = 8  # the VAE's downscale: tile and picture sides are multiples of it
MAX_SCALE = 8.0

# on_step(step, total, x0) across every tile of the pass: step counts from 0 to total - 1.
OnStep = Callable[[int, int, Optional[torch.Tensor]], None]


@dataclass(frozen=True)
class Tile:
    x: int
    y: int
    width: int
    height: int


def check_tiling(tile_width: int, tile_height: int, overlap: int) -> None:
    """ValueError naming the input when tiles or overlap cannot work."""
    for name, value in (("tile_width", tile_width), ("tile_height", tile_height)):
        if not isinstance(value, int) or value < 64 or value % GRID:
            raise ValueError(f"{name}: {value!r} is not a multiple of {GRID} of at least 64: use the model's "
                             "native size (512 for SD1.x, 1024 for SDXL)")
    smallest = min(tile_width, tile_height)
    if not isinstance(overlap, int) or not 0 <= overlap < smallest // 2:
        raise ValueError(f"overlap: {overlap!r} must be from 0 to less than half the tile ({smallest // 2}): "
                         "use e.g. 64")


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The picture's size after upscaling by `scale`, rounded to the VAE's 8-pixel grid (at least 64)."""
    if not isinstance(scale, (int, float)) or not 0 < scale <= MAX_SCALE:
        raise ValueError(f"scale: {scale!r} must be above 0 and at most {MAX_SCALE}: use e.g. 2")
    return tuple(max(64, int(round(side * scale / GRID)) * GRID) for side in (width, height))


def resize(images: torch.Tensor, width: int, height: int, method: str = "lanczos") -> torch.Tensor:
    """IMAGE [B,H,W,C] 0..1 resized to width x height with a named filter (PIL's for lanczos,
    bicubic and bilinear, kept in float; torch's for nearest-exact and area)."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"upscale_method: {method!r} is not one of {list(RESIZE_METHODS)}: use 'lanczos'")
    if tuple(images.shape[1:3]) == (height, width):
        return images
    if method in ("nearest-exact", "area"):
        out = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2).float(), size=(height, width), mode=method)
        return out.permute(0, 2, 3, 1).clamp(0, 1)
    import numpy as np
    from PIL import Image

    filters = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    array = images.float().cpu().numpy()
    out = np.empty((array.shape[0], height, width, array.shape[3]), dtype=np.float32)
    for b in range(array.shape[0]):
        for c in range(array.shape[3]):
            channel = Image.fromarray(np.ascontiguousarray(array[b, :, :, c]), mode="F")
            out[b, :, :, c] = np.asarray(channel.resize((width, height), filters[method]))
    return torch.from_numpy(out).clamp(0, 1)


def axis_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one side: as few tiles as keep neighbours `overlap` apart, spread evenly,
    the first at 0 and the last flush with the end. A side no longer than the tile takes one tile."""
    if size <= tile:
        return [0]
    count = math.ceil((size - overlap) / (tile - overlap))
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def tile_plan(width: int, height: int, tile_width: int, tile_height: int, overlap: int) -> list[Tile]:
    """The tiles covering a width x height picture, row by row (a tile never exceeds the picture)."""
    check_tiling(tile_width, tile_height, overlap)
    tw, th = min(tile_width, width), min(tile_height, height)
    return [Tile(x, y, tw, th)
            for y in axis_starts(height, th, overlap) for x in axis_starts(width, tw, overlap)]


def _axis_weights(starts: list[int], tile: int, size: int) -> list[torch.Tensor]:
    """1-D weights over the whole side, one per tile: 1 inside, linear ramps where neighbours overlap."""
    weights = []
    for i, start in enumerate(starts):
        w = torch.zeros(size, dtype=torch.float64)
        w[start:start + tile] = 1.0
        if i > 0:  # fade in across the overlap with the previous tile
            lo, hi = start, starts[i - 1] + tile
            if hi > lo:
                w[lo:hi] = (torch.arange(hi - lo, dtype=torch.float64) + 0.5) / (hi - lo)
        if i + 1 < len(starts):  # fade out across the overlap with the next tile
            lo, hi = starts[i + 1], start + tile
            if hi > lo:
                w[lo:hi] = torch.minimum(w[lo:hi], 1 - (torch.arange(hi - lo, dtype=torch.float64) + 0.5) / (hi - lo))
        weights.append(w)
    return weights


def blend_weights(plan: list[Tile], width: int, height: int) -> list[torch.Tensor]:
    """Per tile, its [height, width] weight over the tile's own area; at every pixel of the picture the
    weights of the tiles covering it sum to 1 (normalised where more than two tiles meet)."""
    xs = sorted({t.x for t in plan})
    ys = sorted({t.y for t in plan})
    tw, th = plan[0].width, plan[0].height
    wx = dict(zip(xs, _axis_weights(xs, tw, width)))
    wy = dict(zip(ys, _axis_weights(ys, th, height)))
    full = [torch.outer(wy[t.y], wx[t.x]) for t in plan]
    total = torch.stack(full).sum(0)
    return [(w / total)[t.y:t.y + t.height, t.x:t.x + t.width].float() for w, t in zip(full, plan)]


def redraw_tiles(
    model,
    vae,
    positive,
    negative,
    images: torch.Tensor,
    *,
    tile_width: int,
    tile_height: int,
    overlap: int,
    denoise: float,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    schedule: str = "normal",
    device=None,
    on_step: Optional[OnStep] = None,
    should_stop: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """img2img over each tile of each picture of IMAGE [B,H,W,C], feather-blended back together.

    Tile t of picture b is drawn with seed + b * tiles + t. `should_stop()` runs before each tile
    (and every step); `on_step` sees the steps of all tiles as one count.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("image must be an IMAGE [batch, height, width, channels] tensor")
    batch, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    if height % GRID or width % GRID:
        raise ValueError(f"image: {width}x{height} is not on the VAE's {GRID}-pixel grid: upscale it with "
                         "upscaled_size first")
    plan = tile_plan(width, height, tile_width, tile_height, overlap)
    weights = blend_weights(plan, width, height)
    count = batch * len(plan)
    out = torch.zeros(batch, height, width, 3, dtype=torch.float32)
    for b in range(batch):
        for t, (tile, weight) in enumerate(zip(plan, weights)):
            if should_stop is not None:
                should_stop()
            index = b * len(plan) + t
            crop = images[b:b + 1, tile.y:tile.y + tile.height, tile.x:tile.x + tile.width, :3]

            def tile_step(step, total, x0, index=index):
                if on_step is not None:
                    on_step(index * total + step, count * total, x0)

            latent = {"samples": vae_codec.encode(vae, crop)}
            result = sample(model, positive, negative, latent, seed=seed + index, steps=steps, cfg=cfg,
                            sampler_name=sampler_name, schedule=schedule, denoise=denoise, device=device,
                            on_step=tile_step, should_stop=should_stop)
            drawn = vae_codec.decode(vae, result["samples"])
            out[b, tile.y:tile.y + tile.height, tile.x:tile.x + tile.width] += drawn[0] * weight[..., None]
    return out.clamp(0, 1)
