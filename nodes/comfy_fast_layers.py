"""comfy.ops layers whose forward costs what a plain torch layer's does, while nothing is streamed.

Part of the bridge to ComfyUI's internals; only `comfy_cast` imports it.

A comfy.ops layer's forward (ComfyUI 0.3.75) calls `run_every_op()` (which
calls `torch.compiler.is_compiling()` and ComfyUI's interrupt check under a
lock), tests `len()` of two lists and calls the torch forward through
`super()`: 8 Python-level calls (cProfile counts builtins too) more than the
torch layer, for every layer and every call. An SD1.5 UNet has 391 such
layers, SDXL's about 1,050, so per denoising step the pack made 3,120
(SDXL: 8,390) more Python calls than diffusers' own pipeline on the same
module: 1.25x (1.21x) its calls (docs/benchmark.md, "Where the time goes").

The layers here are subclasses of the comfy.ops classes (ComfyUI still sees
`comfy_cast_weights` and streams them after a partial load) with a forward
that reads the three attributes comfy.ops reads and, when none asks for a
cast, runs the same functional call as the torch layer's own forward: same
kernel, same arguments, bit-identical results. When ComfyUI streams the
layer (`comfy_cast_weights`, set by a partial load or `partially_unload`,
which runs no callback) or patches its weight (`weight_function`,
`bias_function`), the comfy.ops forward runs as before; the attributes are
read at every call, so no load or unload can leave a stale fast path.

What the fast path drops is `run_every_op`'s interrupt check inside a
module's forward. These layers are therefore used only for modules the
sampler calls once per step (`comfy_cast.make_castable(per_step=True)`): the
sampler checks ComfyUI's interrupt flag before every UNet evaluation. Text
encoders, VAEs and image encoders keep the comfy.ops classes, so Cancel still
stops them between two layers.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


# Each forward below is written out whole, the cast check included, rather
# than sharing a helper: a helper is one more Python call per layer per step,
# the very cost this module removes. The body after the check is the torch
# layer's own forward (torch 2.x), so the kernel and its arguments are the same.
def _linear(slow: Callable) -> Callable:
    def forward(self, input):
        if self.comfy_cast_weights or self.weight_function or self.bias_function:
            return slow(self, input)
        return F.linear(input, self.weight, self.bias)
    return forward


def _conv(slow: Callable) -> Callable:
    def forward(self, input):
        if self.comfy_cast_weights or self.weight_function or self.bias_function:
            return slow(self, input)
        return self._conv_forward(input, self.weight, self.bias)
    return forward


def _group_norm(slow: Callable) -> Callable:
    def forward(self, input):
        if self.comfy_cast_weights or self.weight_function or self.bias_function:
            return slow(self, input)
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
    return forward


def _layer_norm(slow: Callable) -> Callable:
    def forward(self, input):
        if self.comfy_cast_weights or self.weight_function or self.bias_function:
            return slow(self, input)
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
    return forward


def _embedding(slow: Callable) -> Callable:
    def forward(self, input, **kwargs):  # comfy.ops' Embedding takes an optional out_dtype
        if kwargs or self.comfy_cast_weights or self.weight_function or self.bias_function:
            return slow(self, input, **kwargs)
        return F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)
    return forward


def _generic(slow: Callable, plain: Callable) -> Callable:
    """Layers without an inlined body (transposed convolutions): one call more, no cast check skipped."""
    def forward(self, *args, **kwargs):
        if self.comfy_cast_weights or self.weight_function or self.bias_function:
            return slow(self, *args, **kwargs)
        return plain(self, *args, **kwargs)
    return forward


# The torch forward each body above repeats; a torch class not listed gets `_generic`.
_BODIES = {
    torch.nn.Linear: _linear,
    torch.nn.Conv1d: _conv,
    torch.nn.Conv2d: _conv,
    torch.nn.Conv3d: _conv,
    torch.nn.GroupNorm: _group_norm,
    torch.nn.LayerNorm: _layer_norm,
    torch.nn.Embedding: _embedding,
}


def fast_class(torch_class: type, comfy_class: type) -> type:
    """A subclass of `comfy_class` (a comfy.ops layer over `torch_class`) with the fast forward."""
    body = _BODIES.get(torch_class)
    forward = body(comfy_class.forward) if body else _generic(comfy_class.forward, torch_class.forward)
    name = comfy_class.__name__
    return type(name, (comfy_class,), {
        "__module__": __name__,
        "__qualname__": f"PerStep{name}",
        "__doc__": f"comfy.ops {name} that runs torch's {name} forward directly while nothing is streamed.",
        "forward": forward,
    })
