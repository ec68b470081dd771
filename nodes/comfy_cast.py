"""Lets ComfyUI load diffusers modules partially (small GPUs, --lowvram, --novram).

Part of the bridge to ComfyUI's internals; only `comfy_bridge` imports it.

When a model does not fit in VRAM, ComfyUI's `ModelPatcher.load` keeps the
layers that do not fit in system RAM and streams their weights to the GPU at
each call, but only for layers built from `comfy.ops` (they carry
`comfy_cast_weights` and a forward that casts the weights to the input's
device). A plain `torch.nn.Linear` that does not fit is left behind and the
forward on the GPU fails; a buffer of a parent module (transformers CLIP's
`embeddings.position_ids`) is never moved at all. Two measures, taken when
`comfy_bridge.patcher_for` registers a module:

- `make_castable` switches plain torch layers to their `comfy.ops`
  counterparts, so ComfyUI can stream the ones that do not fit. For modules
  the sampler calls every step it uses subclasses with a cheaper forward
  while nothing is streamed (`comfy_fast_layers`).
- `follow_partial_load` adds an ON_LOAD callback that, after a partial load,
  brings to the compute device whatever ComfyUI left behind and cannot
  stream (buffers, parameters of other modules), and keeps the module's first
  parameter there, since diffusers, transformers and the engine read a
  module's device from it.
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
from comfy.patcher_extension import CallbacksMP

from . import comfy_fast_layers

# The layers SD models are made of, where this ComfyUI has them. RMSNorm is
# left out: no SD1.x/SDXL module uses it, and comfy.ops' cast path reads a
# `bias` that torch's RMSNorm lacks.
_LAYER_NAMES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                "GroupNorm", "LayerNorm", "Embedding")
_CASTABLE = {
    getattr(torch.nn, name): getattr(comfy.ops.disable_weight_init, name)
    for name in _LAYER_NAMES
    if hasattr(comfy.ops.disable_weight_init, name)
}
_PER_STEP = {torch_class: comfy_fast_layers.fast_class(torch_class, comfy_class)
             for torch_class, comfy_class in _CASTABLE.items()}


def _castable_class(module: torch.nn.Module, per_step: bool = False):
    """The comfy.ops class `module` can switch to, or None to leave it as it is.

    With `per_step`, the comfy_fast_layers subclass of that class.

    comfy.ops' classes add only class attributes and a forward that calls the
    torch forward unless ComfyUI turned casting on, so the switch keeps results
    bit-identical. Left alone:
    - subclasses (diffusers' LoRA-compatible layers, peft, bitsandbytes'
      Linear4bit/Linear8bitLt): they have their own forward;
    - a weight or bias that is not a plain Parameter: a tensor subclass
      (torchao's quantized tensors, bitsandbytes' Params4bit) is not
      something comfy.ops' cast path knows how to copy and cast, and `None`
      (a norm without affine parameters) has nothing to stream and would
      break that path;
    - a module with its own `forward` attribute: diffusers hooks (float8
      layerwise casting, group offloading) and accelerate hooks wrap the
      forward bound when they were installed, so comfy.ops' forward would
      never run and a streamed weight would stay behind. (Hooks installed
      after the switch, on a float8 copy of a registered UNet, wrap comfy.ops'
      forward and stream fine.)
    """
    cls = (_PER_STEP if per_step else _CASTABLE).get(type(module))
    if cls is None or "forward" in vars(module) or not _plain_weights(module):
        return None
    return cls


def _plain_weights(module: torch.nn.Module) -> bool:
    """A plain Parameter weight, and a plain Parameter bias or none."""
    bias = module._parameters.get("bias")
    return type(module._parameters.get("weight")) is torch.nn.Parameter and (
        bias is None or type(bias) is torch.nn.Parameter
    )


def make_castable(module: torch.nn.Module, per_step: bool = False) -> int:
    """Switch the plain torch layers inside `module` to comfy.ops classes; how many switched.

    `per_step`: the module is called once per denoising step by the sampler,
    which checks ComfyUI's interrupt flag before each call, so its layers may
    skip comfy.ops' per-layer check (`comfy_fast_layers`). A module called
    once per run (text encoder, VAE) keeps it: Cancel stops it mid-forward.
    """
    switched = 0
    for layer in module.modules():
        cls = _castable_class(layer, per_step)
        if cls is None:
            continue
        if not hasattr(layer, "bias"):  # Embedding: comfy.ops sets it to None at construction
            layer.bias = None
        layer.__class__ = cls
        switched += 1
    return switched


def _streamed(module: torch.nn.Module) -> bool:
    """ComfyUI left this layer's weights on the offload device and casts them per call."""
    return getattr(module, "comfy_cast_weights", False) is True


def _nbytes(tensors) -> int:
    return sum(t.nelement() * t.element_size() for t in tensors if t is not None)


def _load_whole(module: torch.nn.Module, device: torch.device) -> int:
    """Stop streaming one layer: its weights go to `device`, as ComfyUI loads a layer that fits."""
    comfy.model_patcher.wipe_lowvram_weight(module)
    module.to(device)
    module.comfy_patched_weights = True
    return comfy.model_management.module_size(module)


def _move_own_tensors(module: torch.nn.Module, device: torch.device, parameters: bool) -> int:
    """Move the module's own buffers (and parameters) to `device`, not its children's; their size."""
    if parameters:
        module._apply(lambda t: t.to(device), recurse=False)
        return _nbytes(module._buffers.values()) + _nbytes(module._parameters.values())
    for name, buffer in module._buffers.items():
        if buffer is not None:
            module._buffers[name] = buffer.to(device)
    return _nbytes(module._buffers.values())


def _after_load(patcher, device_to, lowvram_model_memory, force_patch_weights, full_load) -> None:
    """ON_LOAD: finish a partial load so that a forward on `device_to` finds every tensor it needs.

    ComfyUI moved the layers that fit (marking them `comfy_patched_weights`)
    and streams the castable ones that did not; everything else is moved
    here, and counted in the model's loaded memory, which ComfyUI recounts
    at every load. The layer holding the first parameter is loaded whole
    even if ComfyUI chose to stream it, since `module.device` and the
    engine's device checks read that parameter. A full load has moved the
    whole module already. Unloading needs no help: `unpatch_model`/`detach`
    move the whole module (buffers too) back to the offload device, and
    `partially_unload` moves only layers ComfyUI loaded, leaving what was
    moved here in place and counted, until the next load puts back any
    first-parameter layer it streamed.
    """
    if device_to is None or full_load:
        return
    holder = patcher.model
    first = next(holder.module.parameters(), None)
    added = 0
    for module in holder.modules():
        owns_first = first is not None and any(p is first for p in module._parameters.values())
        # A layer quantized after it became castable (torchao's int8 on a
        # copy of a registered UNet) has a tensor-subclass weight that
        # comfy.ops' cast path is not known to copy correctly: load it whole.
        if _streamed(module) and (owns_first or not _plain_weights(module)):
            added += _load_whole(module, device_to)
        if getattr(module, "comfy_patched_weights", False) is True:
            continue  # loaded and counted by ComfyUI
        added += _move_own_tensors(module, device_to, parameters=not _streamed(module))
    holder.model_loaded_weight_memory += added


def follow_partial_load(patcher: comfy.model_patcher.ModelPatcher) -> None:
    """Finish every partial load of this patcher's module with `_after_load`."""
    patcher.add_callback(CallbacksMP.ON_LOAD, _after_load)
