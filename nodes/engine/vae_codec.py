"""IMAGE <-> LATENT through a diffusers AutoencoderKL, in ComfyUI's conventions.

IMAGE is [B, H, W, C] float 0..1 (channels last); LATENT samples are
[B, C, H/f, W/f] *unscaled* VAE latents: the sampler applies the
scaling factor, so a LATENT from here plugs into native ComfyUI nodes too.

Encoding returns the mode (mean) of the latent distribution, so the same
image always gives the same latents; `with_std=True` also returns the
posterior's std, from which the sampler draws the latent with its seed as
diffusers' img2img and inpaint pipelines do (posterior.py).

Tiling is done here, not by the VAE's own `enable_tiling()`: the VAE module
is shared and cached by ComfyUI between prompts, and switching its tiling
flags (or tile sizes) would leak into every other user of it. The tiles
overlap by a quarter and are feather-blended (linear ramps in the overlap),
the same scheme as diffusers' tiled VAE, with tile_size counted in pixels as
in ComfyUI's tiled VAE nodes.

Slicing (diffusers' `enable_slicing`) is the `batch_per_call` argument: a big
batch goes through the VAE that many images at a time, so peak activation
memory follows the slice, not the batch. The node picks the slice from the
memory ComfyUI reports free, with the per-image estimates below, as ComfyUI's
own VAE nodes do.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from .components import VAEBundle
from .seamless import seamless_of, vae_patches_applied

logger = logging.getLogger(__name__)

DEFAULT_TILE_SIZE = 512
DEFAULT_BATCH_PER_CALL = 4  # images per VAE call when the caller does not choose

# Peak working memory of one image through an SD/SDXL AutoencoderKL, per
# latent pixel (decode) or image pixel (encode), in units of the compute
# dtype's size: the estimates ComfyUI plans its own VAE batches with.
_DECODE_UNITS_PER_LATENT_PIXEL = 2178 * 64
_ENCODE_UNITS_PER_PIXEL = 1767


def decode_bytes_per_image(latent_height: int, latent_width: int, dtype: torch.dtype) -> int:
    """Working memory to decode one latent of this size (bytes, an estimate)."""
    return _DECODE_UNITS_PER_LATENT_PIXEL * latent_height * latent_width * _dtype_size(dtype)


def encode_bytes_per_image(height: int, width: int, dtype: torch.dtype) -> int:
    """Working memory to encode one image of this size (bytes, an estimate)."""
    return _ENCODE_UNITS_PER_PIXEL * height * width * _dtype_size(dtype)


def _dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def images_per_call(batch: int, bytes_per_image: int, free_bytes: int) -> int:
    """How many images of a batch fit one VAE call in `free_bytes` (at least one)."""
    if bytes_per_image <= 0:
        return max(1, batch)
    return max(1, min(batch, free_bytes // bytes_per_image))


def _check_batch_per_call(batch_per_call: int) -> None:
    if not isinstance(batch_per_call, int) or batch_per_call < 1:
        raise ValueError(f"batch_per_call must be a whole number of images, 1 or more; got {batch_per_call!r}")


def _module_device_dtype(module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


def _check_tile_size(tile_size: int, factor: int) -> None:
    if tile_size < 2 * factor or tile_size % factor != 0:
        raise ValueError(
            f"tile_size must be a multiple of {factor} and at least {2 * factor}, got {tile_size}: "
            "use e.g. 512"
        )


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, size): regular stride, last tile flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """1-D blend weights: linear ramps over `overlap` at the edges that meet a neighbour."""
    w = torch.ones(length)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 1) / (overlap + 1)
        if fade_in:
            w[:overlap] = torch.minimum(w[:overlap], ramp)
        if fade_out:
            w[-overlap:] = torch.minimum(w[-overlap:], ramp.flip(0))
    return w


def _tiled(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile_in: int,
    ratio: float,
    out_channels: int,
    align: int = 1,
) -> torch.Tensor:
    """Apply `fn` (encoder or decoder) tile by tile and feather-blend the results.

    `tile_in` is the tile size on x's grid, `ratio` the output/input size
    ratio (8 for decoding, 1/8 for encoding). Tile origins are multiples of
    `align` (the VAE factor when encoding, so every tile starts on the latent
    grid).
    """
    b, _, h, w = x.shape
    stride = max((tile_in - tile_in // 4) // align * align, align)
    oh, ow = int(round(h * ratio)), int(round(w * ratio))
    out = torch.zeros(b, out_channels, oh, ow, dtype=torch.float32)
    weight = torch.zeros(1, 1, oh, ow, dtype=torch.float32)
    ys, xs = _starts(h, tile_in, stride), _starts(w, tile_in, stride)
    for y in ys:
        for x0 in xs:
            th, tw = min(tile_in, h - y), min(tile_in, w - x0)
            tile = fn(x[:, :, y : y + th, x0 : x0 + tw]).float().cpu()
            oy, ox = int(round(y * ratio)), int(round(x0 * ratio))
            ph, pw = tile.shape[-2], tile.shape[-1]
            overlap_h = int(round((tile_in - stride) * ratio))
            wy = _ramp(ph, min(overlap_h, ph), y > 0, y + th < h)
            wx = _ramp(pw, min(overlap_h, pw), x0 > 0, x0 + tw < w)
            mask = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, oy : oy + ph, ox : ox + pw] += tile * mask
            weight[:, :, oy : oy + ph, ox : ox + pw] += mask
    return out / weight


def _to_pixels(images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] -> RGB [B,3,H,W]; alpha dropped, grey repeated."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"pixels must be an IMAGE [batch, height, width, channels] tensor, got {shape}")
    c = int(images.shape[-1])
    if c == 4:
        images = images[..., :3]  # alpha carries no colour; the VAE takes RGB
    elif c == 1:
        images = images.repeat(1, 1, 1, 3)
    elif c != 3:
        raise ValueError(
            f"pixels have {c} channels; the VAE takes RGB (3), RGBA (4, alpha dropped) or grey (1)"
        )
    return images.permute(0, 3, 1, 2)


@torch.no_grad()
def encode(
    vae: VAEBundle,
    images: torch.Tensor,
    *,
    tiled: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    batch_per_call: int = DEFAULT_BATCH_PER_CALL,
    with_std: bool = False,
    affine: tuple = (2.0, -1.0),
):
    """IMAGE [B,H,W,C] in 0..1 -> unscaled latents [B, C, H/f, W/f] (float32, CPU).

    latents = vae.encode(2 * x - 1).latent_dist.mode(): deterministic (see the
    module docstring). H and W must be multiples of the VAE's downscale f.
    with_std: return (mean, std) of the posterior instead, both [B, C, H/f, W/f].
    affine: (a, b) for a ControlNet hint the VAE takes as a * x + b instead of 2 * x - 1
    (Stability's SD3.5 canny ControlNet).
    """
    f = vae.downscale
    pixels = _to_pixels(images)
    h, w = int(pixels.shape[-2]), int(pixels.shape[-1])
    if h % f or w % f:
        raise ValueError(
            f"pixels are {w}x{h}, but {vae.name!r}'s VAE needs width and height divisible by {f}: "
            f"resize or crop the image first (e.g. to {w // f * f}x{h // f * f})"
        )
    if tiled:
        _check_tile_size(tile_size, f)
    _check_batch_per_call(batch_per_call)
    module = vae.vae
    device, dtype = _module_device_dtype(module)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=device, dtype=dtype) * affine[0] + affine[1]
        dist = module.encode(x).latent_dist
        return torch.cat([dist.mode(), dist.std], dim=1) if with_std else dist.mode()

    channels = vae.latent_channels * (2 if with_std else 1)
    chunks = []
    with vae_patches_applied(vae):
        for part in pixels.split(batch_per_call):
            if tiled:
                chunks.append(_tiled(part, run, tile_size, 1.0 / f, channels, align=f))
            else:
                chunks.append(run(part).float().cpu())
    out = torch.cat(chunks)
    if with_std:
        mean, std = out.split(vae.latent_channels, dim=1)
        return mean.contiguous(), std.contiguous()
    return out


@torch.no_grad()
def decode(
    vae: VAEBundle,
    latents: torch.Tensor,
    *,
    tiled: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    batch_per_call: int = DEFAULT_BATCH_PER_CALL,
) -> torch.Tensor:
    """Unscaled latents [B,C,h,w] -> IMAGE [B, h*f, w*f, 3] float32 0..1 on the CPU.

    images = (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1), diffusers'
    postprocess.
    """
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"samples must be a LATENT [batch, channels, height, width] tensor, got {shape}")
    channels = int(latents.shape[1])
    if channels != vae.latent_channels:
        raise ValueError(
            f"samples have {channels} channels, DS VAE {vae.name!r} ({vae.family}) expects "
            f"{vae.latent_channels}: decode with the VAE of the model that made these latents"
        )
    f = vae.downscale
    if tiled:
        _check_tile_size(tile_size, f)
        if seamless_of(vae) is not None:
            logger.warning("decoding a seamless-tiling VAE in tiles: each tile wraps on itself, so seams may "
                           "show; decode with tiled off")
    _check_batch_per_call(batch_per_call)
    module = vae.vae
    device, dtype = _module_device_dtype(module)

    def run(z: torch.Tensor) -> torch.Tensor:
        return module.decode(z.to(device=device, dtype=dtype)).sample

    chunks = []
    with vae_patches_applied(vae):
        for part in latents.split(batch_per_call):
            if tiled:
                img = _tiled(part, run, tile_size // f, float(f), 3)
            else:
                img = run(part).float().cpu()
            chunks.append((img / 2 + 0.5).clamp(0, 1))
    return torch.cat(chunks).permute(0, 2, 3, 1).contiguous()
