"""Weight storage, attention implementation and regional compilation as DS_MODEL values.

`apply_options` returns a new ModelBundle; the cached base UNet is never
changed permanently. Two mechanisms, chosen per option:

- Weight storage (float8 via diffusers' layerwise casting, int8 via torchao,
  NF4 via bitsandbytes)
  changes the stored weights, which cannot be undone exactly after a run, so it
  is applied to a separate deep copy of the UNet. The copy is cached per
  (source UNet, storage choice) in a WeakKeyDictionary keyed by the source
  UNet: two workflows asking for the same option share one copy, and the copy
  goes away with its source (when the checkpoint cache lets the UNet go).
  Memory cost: while both live, the base UNet plus the copy (for float8, one
  byte per weight of the layers diffusers casts; norms, embeddings and
  biases-free small layers that diffusers skips stay in the compute dtype).
- Attention implementation and torch.compile are per-run hooks
  (`SamplingHook`): `begin` installs them on the UNet the bundle points at,
  `end` restores exactly what was there (the processor objects themselves,
  and each block's previous compiled call, normally none). No memory beyond
  the processors and compiled graphs; the compiled callables live on the hook,
  so a cached DS_MODEL compiles once and reuses the graphs run after run.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import threading
import weakref
from dataclasses import replace
from typing import Any

import torch

from . import float8_storage
from .components import ModelBundle
from .hooks import SamplingHook

log = logging.getLogger(__name__)

STORAGE_DEFAULT = "default"
# float8 storages are named after their dtype, in one table (float8_storage marks kept files with it).
STORAGE_FP8_E4M3 = float8_storage.STORAGE_NAMES[torch.float8_e4m3fn]
STORAGE_FP8_E5M2 = float8_storage.STORAGE_NAMES[torch.float8_e5m2]
STORAGE_INT8 = "int8 (torchao)"
STORAGE_NF4 = "nf4 (bitsandbytes)"
WEIGHT_STORAGES = [STORAGE_DEFAULT, STORAGE_FP8_E4M3, STORAGE_FP8_E5M2, STORAGE_INT8, STORAGE_NF4]
FLOAT8 = {name: dtype for dtype, name in float8_storage.STORAGE_NAMES.items()}

# The optional package each storage needs (imported only when it is chosen).
_PACKAGES = {STORAGE_INT8: "torchao", STORAGE_NF4: "bitsandbytes"}

ATTENTION_AS_LOADED = "as loaded"
ATTENTION_SDPA = "sdpa"
ATTENTION_CLASSIC = "classic (no sdpa)"
ATTENTIONS = [ATTENTION_AS_LOADED, ATTENTION_SDPA, ATTENTION_CLASSIC]

# The transformer families: their attention processors are their own (AttentionHook).
FLOW_FAMILIES = ("sd3", "flux")
# The repeated blocks regional compilation compiles when a model does not name
# them (`_repeated_blocks`): the UNets' transformer blocks, SD3's joint blocks
# (SD3Transformer2DModel names none; Flux names its two kinds itself).
REPEATED_BLOCKS = ("BasicTransformerBlock", "JointTransformerBlock", "SD3SingleTransformerBlock")


def _has(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def check_storage(weight_storage: str) -> None:
    """Raise ValueError (naming the input and the package to install) if the choice cannot run here."""
    if weight_storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight_storage: '{weight_storage}' is not one of {WEIGHT_STORAGES}.")
    for storage, package in _PACKAGES.items():
        if weight_storage == storage and not _has(package):
            raise ValueError(
                f"weight_storage: '{storage}' needs the {package} package, which is not installed in ComfyUI's "
                f"Python: pip install {package} (or pick '{STORAGE_FP8_E4M3}', which needs nothing extra)."
            )


def check_attention(attention: str) -> None:
    if attention not in ATTENTIONS:
        raise ValueError(f"attention: '{attention}' is not one of {ATTENTIONS}.")


# ------------------------------------------------------------ stored copies

_copies: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def stored_copy(unet: torch.nn.Module, weight_storage: str, compute_dtype: torch.dtype) -> torch.nn.Module:
    """The UNet with its weights stored as `weight_storage`, one copy per (source, choice).

    A source already stored so (a float8 file kept as float8 on load, or a
    stored copy) is its own copy. A model loaded from a float8 file is stored
    another way from its file's values (float8_storage.release on the copy);
    a stored copy is not re-stored, since that would quantize rounded weights
    again."""
    already = storage_of(unet)
    if already == weight_storage:
        return unet
    if already != STORAGE_DEFAULT and not float8_storage.is_kept(unet):
        raise ValueError(
            f"weight_storage: '{weight_storage}' cannot re-store a model already stored as '{already}' by another "
            "Diffusers Model Options node. Connect this node to the loader's MODEL instead."
        )
    key = (weight_storage, compute_dtype)
    with _lock:
        per_source = _copies.setdefault(unet, {})
        if key in per_source:
            return per_source[key]
        copied = _copy_without_registration(unet)
        if float8_storage.is_kept(copied):
            float8_storage.release(copied, compute_dtype)
        if weight_storage in FLOAT8:
            _float8(copied, FLOAT8[weight_storage], compute_dtype)
        elif weight_storage == STORAGE_INT8:
            _torchao_int8(copied)
        elif weight_storage == STORAGE_NF4:
            _bitsandbytes_nf4(copied, compute_dtype)
        else:  # pragma: no cover - check_storage refuses the rest
            raise ValueError(f"weight_storage: '{weight_storage}' has no stored form.")
        copied.eval()
        copied.__dict__["_ds_compute_dtype"] = compute_dtype  # components.compute_dtype reads it
        copied.__dict__["_ds_weight_storage"] = weight_storage  # refuse_quantized_lora reads it
        per_source[key] = copied
        return copied


def _float8(module: torch.nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype) -> None:
    """diffusers' layerwise casting, in place: weights stored in float8, each layer upcast for its forward.

    A diffusers model (UNet, SD3/Flux transformer) uses its own
    `enable_layerwise_casting`, which skips the layers the model names
    (embeddings, norms, the first and last projections). A transformers text
    encoder (T5, CLIP) has no such method: diffusers' `apply_layerwise_casting`
    does the same with its default skip patterns (norms, patch/position
    embeddings) plus the layers the encoder keeps in float32: T5's feed-forward
    output `wo` casts its input to that layer's weight dtype, which would be
    float8 (as diffusers' own method adds `_keep_in_fp32_modules`).
    nn.Embedding is never cast, so T5's token table stays in the compute dtype.
    """
    if hasattr(module, "enable_layerwise_casting"):
        module.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=compute_dtype)
        return
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    skip = tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    apply_layerwise_casting(module, storage_dtype=storage_dtype, compute_dtype=compute_dtype,
                            skip_modules_pattern=skip)


def _copy_without_registration(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy that leaves out what a host (ComfyUI) attached to the module's __dict__.

    The node layer stores its model-management handle as `_ds_patcher` on a
    module; copying it would give the copy a handle that manages the source.
    The copy gets none and is registered afresh the first time it runs.
    """
    # Only handles: a dtype or a string is shared by every module that holds one, and would become None.
    memo = {id(value): None for name, value in module.__dict__.items()
            if name.startswith("_ds_") and not isinstance(value, (str, bool, torch.dtype))}
    return copy.deepcopy(module, memo)


def _torchao_int8(module: torch.nn.Module) -> None:
    """int8 weight-only storage of every Linear layer, in place (torchao; per-output-channel scales).

    Convolutions keep their dtype: torchao's weight-only configs quantize
    Linear layers, which hold most of an SD UNet's attention and feed-forward
    weights.
    """
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Int8WeightOnlyConfig

        config = Int8WeightOnlyConfig()
    except ImportError:  # torchao before 0.9 named it differently
        from torchao.quantization import int8_weight_only

        config = int8_weight_only()
    quantize_(module, config)


def _bitsandbytes_nf4(module: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Every plain Linear layer becomes a bitsandbytes NF4 Linear4bit, in place.

    Blocks of 64 weights share one absmax scale (no double quantization, as
    diffusers' BitsAndBytesConfig defaults); the layer dequantizes to
    `compute_dtype` for each matmul. bitsandbytes runs this on CUDA and, since
    0.45, on the CPU too. A Linear counts when its weight is a plain
    Parameter: that includes the host's castable Linear subclass (ComfyUI's,
    once the model has run) and leaves out layers already quantized.
    """
    import bitsandbytes as bnb

    # Layers the model keeps in float32 (T5's feed-forward `wo` casts its input to
    # that layer's weight dtype, uint8 for a packed NF4 weight) stay as they are.
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not _plain_linear(child) or name in keep:
                continue
            device = child.weight.device
            with torch.device("meta"):
                layer = bnb.nn.Linear4bit(
                    child.in_features, child.out_features, bias=child.bias is not None,
                    compute_dtype=compute_dtype, compress_statistics=False, quant_type="nf4",
                )
            layer.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, compress_statistics=False, quant_type="nf4", module=layer
            )
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            # On CPUs with AVX512-BF16, bitsandbytes repacks a weight in place at its
            # first forward into a CPU-only layout: a later move to the GPU (ComfyUI
            # loading the model) would then carry the wrong layout, and the repack
            # fails on layers narrower than its 64-wide blocks. Keep the portable form.
            layer.support_avx512bf16_for_cpu = False
            setattr(parent, name, layer.to(device))  # moving a Params4bit to a device quantizes it


# Storages whose weights a LoRA cannot be merged into: torchao's Int8Tensor has no
# in-place add, and an NF4 weight is packed (its shape is not the layer's).
# float8 takes the merge (layerwise casting keeps a plain tensor, rounded again).
NO_LORA = (STORAGE_INT8, STORAGE_NF4)


def storage_of(module) -> str:
    """The weight_storage a module was stored with by this module (STORAGE_DEFAULT if none)."""
    return getattr(module, "__dict__", {}).get("_ds_weight_storage", STORAGE_DEFAULT)


def refuse_quantized_lora(lora_name: str, denoiser, encoders: tuple, strength_text_encoder: float) -> None:
    """ValueError, naming the input and the way out, for a LoRA on int8 / NF4 weights."""
    if storage_of(denoiser) in NO_LORA:  # even at strength 0: matching the layers reads their shapes
        raise ValueError(
            f"lora_name: {lora_name!r} cannot be merged into a model stored as '{storage_of(denoiser)}' "
            f"(Diffusers Model Options weight_storage). Use '{STORAGE_FP8_E4M3}' or '{STORAGE_DEFAULT}' storage "
            "with a LoRA."
        )
    stored = [storage_of(e) for e in encoders if e is not None and storage_of(e) in NO_LORA]
    if strength_text_encoder != 0 and stored:
        raise ValueError(
            f"lora_name: {lora_name!r} cannot be merged into text encoders stored as '{stored[0]}' (Diffusers "
            f"Text Encoder Options weight_storage). Set strength_text_encoder to 0 (a LoRA without text-encoder "
            f"layers needs none), or use '{STORAGE_FP8_E4M3}' or '{STORAGE_DEFAULT}' storage for the encoders."
        )


def stored_copies_of(unet: torch.nn.Module) -> dict:
    """The cached stored copies of one source UNet (for tests and memory reports)."""
    with _lock:
        return dict(_copies.get(unet, {}))


def clear_stored_copies() -> None:
    with _lock:
        _copies.clear()


def _plain_linear(layer: torch.nn.Module) -> bool:
    return isinstance(layer, torch.nn.Linear) and type(layer.weight) is torch.nn.Parameter


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes held by the module's parameters and buffers as stored (quantized tensors included)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(_stored_bytes(t) for t in tensors)


def _stored_bytes(tensor: torch.Tensor) -> int:
    """A tensor's own storage: the inner tensors of a tensor subclass (torchao), plus
    the scales bitsandbytes keeps beside its packed weights."""
    if hasattr(type(tensor), "__tensor_flatten__"):
        inner, _ = tensor.__tensor_flatten__()
        return sum(_stored_bytes(getattr(tensor, name)) for name in inner)
    size = tensor.numel() * tensor.element_size()
    quant_state = getattr(tensor, "quant_state", None)
    if quant_state is not None:
        size += sum(v.numel() * v.element_size() for v in quant_state.as_dict(packed=False).values()
                    if torch.is_tensor(v))
    return size


# ------------------------------------------------------------ per-run hooks


class AttentionHook(SamplingHook):
    """Installs one attention processor kind for a run; restores the previous processors after."""

    order = -200  # before LoRA and IP-Adapter: they see (and restore to) these processors
    transformer_ready = True  # SD3 / Flux take it (families/flow.py check_latent)

    def __init__(self, attention: str):
        check_attention(attention)
        self.attention = attention
        self._saved: tuple[Any, dict] | None = None
        self._kernel: Any = None  # the flow families' sdpa_kernel context while a run lasts

    def _processor(self):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        return AttnProcessor2_0() if self.attention == ATTENTION_SDPA else AttnProcessor()

    def begin(self, run, role) -> None:
        unet = run.model.unet
        if getattr(run.model, "family", None) in FLOW_FAMILIES:
            self._begin_flow()
            return
        self._saved = (unet, dict(unet.attn_processors))
        unet.set_attn_processor(self._processor())

    def _begin_flow(self) -> None:
        """SD3's and Flux's processors carry the family's attention (joint text-image
        streams, rotary embeddings): they cannot be swapped for the UNet's. Both
        already call PyTorch's scaled_dot_product_attention, so "sdpa" keeps them;
        "classic" keeps them too and restricts that call to PyTorch's math kernel
        (plain matmul and softmax) for the run."""
        if self.attention != ATTENTION_CLASSIC:
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = sdpa_kernel([SDPBackend.MATH])
        kernel.__enter__()
        self._kernel = kernel

    def end(self) -> None:
        kernel = self._kernel
        if kernel is not None:
            self._kernel = None
            kernel.__exit__(None, None, None)
        if self._saved is not None:
            unet, processors = self._saved
            self._saved = None
            unet.set_attn_processor(processors)


class CompileHook(SamplingHook):
    """Regional torch.compile: each repeated block (BasicTransformerBlock; SD3's joint
    blocks; Flux's double and single blocks) runs compiled for one run.

    `nn.Module.compile` stores the compiled call in `_compiled_call_impl`; the
    hook keeps one compiled callable per block (so graphs are reused by later
    runs of the same DS_MODEL) and puts back each block's previous value after.
    """

    order = -300
    transformer_ready = True  # SD3 / Flux take it: their repeated blocks are found like the UNet's

    def __init__(self, compile_kwargs: dict | None = None):
        self.compile_kwargs = dict(compile_kwargs or {})
        self._compiled: "weakref.WeakKeyDictionary[torch.nn.Module, Any]" = weakref.WeakKeyDictionary()
        self._saved: list[tuple[torch.nn.Module, Any]] = []

    @staticmethod
    def blocks(unet) -> list[torch.nn.Module]:
        names = tuple(getattr(unet, "_repeated_blocks", None) or REPEATED_BLOCKS)
        return [m for m in unet.modules() if type(m).__name__ in names]

    def begin(self, run, role) -> None:
        self._saved = []
        for block in self.blocks(run.model.unet):
            compiled = self._compiled.get(block)
            if compiled is None:
                compiled = torch.compile(block._call_impl, **self.compile_kwargs)
                self._compiled[block] = compiled
            self._saved.append((block, block.__dict__.get("_compiled_call_impl")))
            block._compiled_call_impl = compiled

    def end(self) -> None:
        for block, previous in reversed(self._saved):
            block._compiled_call_impl = previous
        self._saved = []


def apply_options(
    model: ModelBundle,
    *,
    weight_storage: str = STORAGE_DEFAULT,
    attention: str = ATTENTION_AS_LOADED,
    compile_unet: bool = False,
) -> ModelBundle:
    """A new DS_MODEL with these options; `model` and its UNet are left as they are."""
    check_storage(weight_storage)
    check_attention(attention)
    loras = [p for p in model.patches if type(p).__name__ == "UNetLora"]
    if weight_storage in NO_LORA and loras:
        raise ValueError(
            f"weight_storage: '{weight_storage}' cannot take the LoRA {loras[0].name!r} already on this model "
            f"(a LoRA is merged into the weights for each run). Use '{STORAGE_FP8_E4M3}' with a LoRA."
        )
    result = model
    if weight_storage != STORAGE_DEFAULT:
        result = replace(result, unet=stored_copy(model.unet, weight_storage, model.dtype))
    if attention != ATTENTION_AS_LOADED:
        result = result.with_patch(AttentionHook(attention))
    if compile_unet:
        result = result.with_patch(CompileHook())
    return result


# ------------------------------------------------------------ text encoders

ENCODERS_ALL = "all text encoders"
ENCODERS_T5 = "T5 only"
ENCODER_CHOICES = [ENCODERS_ALL, ENCODERS_T5]


def _is_t5(encoder) -> bool:
    return encoder is not None and getattr(getattr(encoder, "config", None), "model_type", None) in ("t5", "umt5")


def _floating_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype an encoder computes in: its mark if its float8 weights are kept, else its first weight's."""
    if "_ds_compute_dtype" in module.__dict__:
        return module.__dict__["_ds_compute_dtype"]
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def apply_text_encoder_options(bundle, *, weight_storage: str = STORAGE_DEFAULT, apply_to: str = ENCODERS_ALL):
    """A new DS_TEXT_ENCODER whose encoders (all, or T5 alone) are stored as `weight_storage`.

    Same mechanism as the transformer's: a shared stored copy per (encoder,
    storage), computed in the encoder's own dtype; the loaded encoders are not
    changed. T5-XXL is Flux's and SD3's largest encoder (4.7 B parameters, 19 GB
    in float32), so "T5 only" is the usual choice; it is refused for a bundle
    without T5 rather than silently doing nothing.
    """
    check_storage(weight_storage)
    if apply_to not in ENCODER_CHOICES:
        raise ValueError(f"apply_to: '{apply_to}' is not one of {ENCODER_CHOICES}.")
    if weight_storage == STORAGE_DEFAULT:
        return bundle
    if apply_to == ENCODERS_T5 and not any(_is_t5(e) for e in bundle.text_encoders):
        raise ValueError(
            f"apply_to: '{ENCODERS_T5}' but text encoder '{bundle.name}' has no T5 (SD1.x, SDXL and SD3 loaded "
            f"without t5xxl have none). Choose '{ENCODERS_ALL}', or connect a Flux / SD3 text encoder with T5."
        )
    encoders = tuple(
        e if e is None or (apply_to == ENCODERS_T5 and not _is_t5(e))
        else stored_copy(e, weight_storage, _floating_dtype(e))
        for e in bundle.text_encoders
    )
    return replace(bundle, text_encoders=encoders)
