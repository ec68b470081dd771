"""Seamless tiling: circular padding in the convolutions, for one run only.

A1111's `tiling: true` makes every Conv2d of the UNet and the VAE pad
circularly (`padding_mode="circular"`), so what leaves the right edge comes
back on the left: the picture tiles without a visible seam. Here the padding
can wrap on both axes or on one (a texture that repeats sideways only).

How: each padded Conv2d gets an instance attribute `_conv_forward` that pads
with `F.pad` (circular on the tiled axes, zeros on the others) and convolves
without padding; PyTorch's own Conv2d.forward calls `self._conv_forward`, so
the instance attribute takes over. Restoring deletes the attribute again (or
puts back one that was there before): no weight, buffer or flag of the
module is touched, so the cached modules come out bit-identical. Convolutions
without padding (1x1 projections, the VAE's explicitly padded downsamplers)
are left alone, as circular padding would not reach them anyway.

The patch is a value: `SeamlessPatch` rides on DS_MODEL.patches (a sampling
hook that patches the UNet between `begin` and `end`) and on DS_VAE.patches
(`vae_patches_applied` around one encode or decode).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from .hooks import SamplingHook

BOTH = "both"
X_ONLY = "x only"
Y_ONLY = "y only"
AXES = (BOTH, X_ONLY, Y_ONLY)

_MISSING = object()


def check_axes(axes: str) -> tuple[bool, bool]:
    """(wrap x, wrap y) for an axes option; ValueError naming the choices otherwise."""
    if axes not in AXES:
        raise ValueError(f"axes: {axes!r} is not one of {list(AXES)}: use 'both' for a texture that tiles all ways")
    return axes in (BOTH, X_ONLY), axes in (BOTH, Y_ONLY)


def _padded_convs(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    """The Conv2d layers that pad (only they can wrap), zero-padded ones only."""
    out = []
    for layer in module.modules():
        if not isinstance(layer, torch.nn.Conv2d) or layer.padding_mode != "zeros":
            continue
        if isinstance(layer.padding, str) or not any(layer.padding):
            continue
        out.append(layer)
    return out


def _wrapping_forward(conv: torch.nn.Conv2d, wrap_x: bool, wrap_y: bool):
    """A `_conv_forward` that pads circularly on the chosen axes, zeros elsewhere."""
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    x_mode = "circular" if wrap_x else "constant"
    y_mode = "circular" if wrap_y else "constant"

    def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias):
        x = F.pad(x, (left, right, 0, 0), mode=x_mode)
        x = F.pad(x, (0, 0, top, bottom), mode=y_mode)
        return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return conv_forward


def patch_module(module: torch.nn.Module, wrap_x: bool, wrap_y: bool) -> list[tuple[torch.nn.Conv2d, object]]:
    """Make `module`'s padded convolutions wrap; returns what `restore` needs."""
    saved = []
    try:
        for conv in _padded_convs(module):
            saved.append((conv, conv.__dict__.get("_conv_forward", _MISSING)))
            conv._conv_forward = _wrapping_forward(conv, wrap_x, wrap_y)
    except BaseException:
        restore(saved)
        raise
    return saved


def restore(saved: list[tuple[torch.nn.Conv2d, object]]) -> None:
    """Put every patched convolution back exactly as it was."""
    for conv, previous in reversed(saved):
        if previous is _MISSING:
            conv.__dict__.pop("_conv_forward", None)
        else:
            conv.__dict__["_conv_forward"] = previous
    saved.clear()


@contextlib.contextmanager
def circular_padding(module: torch.nn.Module, axes: str = BOTH) -> Iterator[None]:
    """Within the block, `module` tiles seamlessly on `axes`; restored after, also on error."""
    wrap_x, wrap_y = check_axes(axes)
    saved = patch_module(module, wrap_x, wrap_y)
    try:
        yield
    finally:
        restore(saved)


class SeamlessPatch(SamplingHook):
    """Seamless tiling on DS_MODEL (a sampling hook) and DS_VAE (around encode/decode).

    One value serves both sockets; `seamless_of` finds it. The UNet is patched
    from `begin` to `end` of one run; the sampler calls `end` also on Cancel.
    """

    order = -150  # before other hooks, after LoRA merging (which rewrites weights, not forwards)

    def __init__(self, axes: str = BOTH):
        self.wrap_x, self.wrap_y = check_axes(axes)
        self.axes = axes
        self._saved: list = []

    def begin(self, run, role) -> None:
        if seamless_of(run.model) is self:  # the last one attached wins; the others stand aside
            self._saved = patch_module(run.model.unet, self.wrap_x, self.wrap_y)

    def end(self) -> None:
        restore(self._saved)

    def __repr__(self) -> str:
        return f"SeamlessPatch(axes={self.axes!r})"


def seamless_of(bundle) -> "SeamlessPatch | None":
    """The seamless patch a DS_MODEL or DS_VAE carries (the last attached), else None."""
    found = None
    for patch in getattr(bundle, "patches", ()):
        if isinstance(patch, SeamlessPatch):
            found = patch
    return found


@contextlib.contextmanager
def vae_patches_applied(vae) -> Iterator[None]:
    """The DS_VAE's patches in effect around one encode or decode (today: seamless tiling)."""
    patch = seamless_of(vae)
    if patch is None:
        yield
        return
    saved = patch_module(vae.vae, patch.wrap_x, patch.wrap_y)
    try:
        yield
    finally:
        restore(saved)


def with_seamless(model, vae, axes: str = BOTH):
    """New DS_MODEL and DS_VAE values that tile seamlessly on `axes`; the inputs are unchanged.

    A seamless patch already on them is replaced (axes chosen again, not stacked).
    """
    from dataclasses import replace

    patch = SeamlessPatch(axes)
    model_patches = tuple(p for p in model.patches if not isinstance(p, SeamlessPatch)) + (patch,)
    vae_patches = tuple(p for p in vae.patches if not isinstance(p, SeamlessPatch)) + (patch,)
    return replace(model, patches=model_patches), replace(vae, patches=vae_patches)
