"""Float8 weights kept as a file stores them; each layer's float8 tensors are upcast only while it runs.

Why: FLUX.1 and T5-XXL are mostly shared as plain fp8 files
(flux1-dev-fp8.safetensors, t5xxl_fp8_e4m3fn.safetensors). Dequantizing them
on load, as `dit_tensors.read_component` does by default, multiplies their
memory by the compute dtype's width: a 12 GB FLUX.1 transformer becomes 24 GB
in bfloat16 and 48 GB in float32, more than the machines those files are made
for. ComfyUI keeps such weights in float8 and casts each layer as it runs;
the pack does the same for the transformer and T5.

How this differs from diffusers' layerwise casting (used by DSModelOptions
float8): diffusers casts every parameter of a layer to the storage dtype,
rounding biases and norm scales the file kept wider, and it leaves whole
layers (norms, embedders) in the compute dtype by name. Here exactly the
tensors the file stored as float8 stay float8, whatever layer holds them;
everything else is in the compute dtype as usual. float8 converts exactly to
float16, bfloat16 and float32, so the results are bit for bit those of
dequantizing on load, with one byte per float8 weight resident.

The casts are plain torch forward hooks, so ComfyUI's partial loading still
streams these layers on a small GPU (comfy_cast leaves a layer whose
`forward` was replaced, as diffusers' hooks do, unstreamed). A diffusers
model also gets a no-op hook under diffusers' casting name (`layerwise_casting`)
with the compute dtype, so `ModelMixin.dtype` reports the compute dtype as it
does for diffusers' casting. Parameter objects never change, only their
tensors for the duration of one forward: a LoRA merge (which swaps a
weight's tensor for a run and puts the original object back) works on top.
"""
from __future__ import annotations

import torch

FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# The hook name diffusers' `get_parameter_dtype` asks for its compute dtype.
HOOK_NAME = "layerwise_casting"
# Names of the storages DSModelOptions knows (model_options.WEIGHT_STORAGES).
STORAGE_NAMES = {torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2"}


class _Upcast:
    """Forward pre-hook and hook of one module: its float8 parameters in the compute dtype while it runs.

    `owned`: (module, parameter name) pairs, the hooked module's own or, for a
    group (see keep_float8), its descendants'. Plain torch hooks, not a
    replaced `forward`: comfy_cast.make_castable still switches the layer to
    comfy.ops (so ComfyUI can stream it on a small GPU), and `always_call`
    puts the float8 tensors back even when the forward raises."""

    def __init__(self, owned: tuple, compute_dtype: torch.dtype):
        self.owned = owned
        self.compute_dtype = compute_dtype
        self.stored: list = []

    def before(self, module, args):
        self.stored = [(owner._parameters[name], owner._parameters[name].data) for owner, name in self.owned]
        for param, data in self.stored:
            param.data = data.to(self.compute_dtype)

    def after(self, module, args, output):
        for param, data in self.stored:
            param.data = data
        self.stored = []


class ComputeDtype:
    """A no-op diffusers hook under diffusers' casting name: `ModelMixin.dtype` then reports `compute_dtype`."""

    _is_stateful = False

    def __init__(self, compute_dtype: torch.dtype):
        self.compute_dtype = compute_dtype
        self.fn_ref = None

    def initialize_hook(self, module):
        return module

    def deinitalize_hook(self, module):  # diffusers' spelling
        return module

    def reset_state(self, module):
        return module

    def pre_forward(self, module, *args, **kwargs):
        return args, kwargs

    def post_forward(self, module, output):
        return output


def float8_parameters(module: torch.nn.Module) -> list:
    """(owning module, parameter name) of every float8 parameter under `module`."""
    return [(child, name) for child in module.modules() for name, p in child._parameters.items()
            if p is not None and p.dtype in FLOAT8_DTYPES]


def _hook_points(module: torch.nn.Module, groups: tuple) -> dict:
    """{module to hook: its (owner, name) pairs}: a group module takes all of its descendants' pairs."""
    points: dict = {}
    claimed: set = set()
    for name, child in module.named_modules():
        if groups and name.rsplit(".", 1)[-1] in groups:
            owned = [pair for pair in float8_parameters(child) if id(pair[0]) not in claimed]
            claimed.update(id(owner) for owner, _ in owned)
            if owned:
                points[child] = owned
    for owner, name in float8_parameters(module):
        if id(owner) not in claimed:
            points.setdefault(owner, []).append((owner, name))
    return points


def keep_float8(module: torch.nn.Module, compute_dtype: torch.dtype, groups: tuple = ()) -> torch.nn.Module:
    """Hook the modules holding float8 parameters so they compute in `compute_dtype`; marks the storage.

    groups: names of modules whose float8 descendants are cast together when
    the group runs, for code that reads a child's weight dtype before calling
    it (transformers' T5 feed-forward casts its activations to `wo.weight`'s
    dtype: float8 there would round them). A module without float8
    parameters is returned untouched. The marks are the ones DSModelOptions'
    stored copies carry: `_ds_compute_dtype` (what components.compute_dtype
    reports, so inputs are cast to it) and `_ds_weight_storage` (so a float8
    option on this model adds no second copy).
    """
    from diffusers.hooks import HookRegistry

    points = _hook_points(module, groups)
    if not points:
        return module
    for child, owned in points.items():
        upcast = _Upcast(tuple(owned), compute_dtype)
        child.register_forward_pre_hook(upcast.before)
        child.register_forward_hook(upcast.after, always_call=True)
    if hasattr(module, "enable_layerwise_casting"):  # a diffusers model: its `dtype` asks the hook registry
        HookRegistry.check_if_exists_or_initialize(module).register_hook(ComputeDtype(compute_dtype), HOOK_NAME)
    dtypes = {owner._parameters[name].dtype for owned in points.values() for owner, name in owned}
    module.__dict__["_ds_compute_dtype"] = compute_dtype
    module.__dict__["_ds_weight_storage"] = STORAGE_NAMES[max(dtypes, key=str)]
    module.__dict__["_ds_float8_kept"] = True
    return module


def is_kept(module: torch.nn.Module) -> bool:
    """Whether `keep_float8` hooked this module (its float8 weights come from its file)."""
    return bool(getattr(module, "__dict__", {}).get("_ds_float8_kept"))


def release(module: torch.nn.Module, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Undo `keep_float8` in place: float8 parameters upcast to `compute_dtype`, hooks and marks removed.

    For a copy about to be stored another way (DSModelOptions int8 / NF4 /
    float8_e5m2 on a model loaded from an fp8 file): it is quantized from the
    file's values, as it was before float8 weights were kept."""
    for child in module.modules():
        for hooks in (child._forward_pre_hooks, child._forward_hooks):
            for key in [k for k, hook in hooks.items() if isinstance(getattr(hook, "__self__", None), _Upcast)]:
                del hooks[key]
                child._forward_hooks_always_called.pop(key, None)
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and isinstance(registry.get_hook(HOOK_NAME), ComputeDtype):
        registry.remove_hook(HOOK_NAME, recurse=False)
    for owner, name in float8_parameters(module):
        owner._parameters[name].data = owner._parameters[name].data.to(compute_dtype)
    for mark in ("_ds_compute_dtype", "_ds_weight_storage", "_ds_float8_kept"):
        module.__dict__.pop(mark, None)
    return module


def float8_bytes(module: torch.nn.Module) -> int:
    """Bytes held by float8 parameters (one per weight): for logs and memory reports."""
    return sum(owner._parameters[name].numel() for owner, name in float8_parameters(module))
