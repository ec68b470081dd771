"""LoRA as a value: merged into the weights for one run, then undone exactly.

`load_lora` reads a file (any format `lora_formats` knows; SD3 / Flux files
go through diffusers' converters first, see lora_dit.py), `apply_lora`
matches its layers against a model's real modules (so a wrong LoRA fails in
the LoRA node, not halfway through sampling) and returns new DS_MODEL /
DS_TEXT_ENCODER values carrying a patch. The cached modules are not touched.

How a patch takes effect: for the duration of one sampling run (the
`SamplingHook` begin/end pair) or one prompt encode (`text_encoder_patch`),
every touched weight's tensor is replaced by W + sum_i(strength_i * alpha_i /
rank_i * up_i @ down_i), computed in float32 and cast once. At the end the
Parameter gets back its original tensor object, so the cached weights are
restored bit for bit (undoing by subtraction would not be exact) and the
module tree and state_dict keys never change. All the LoRAs of one bundle are
merged together by the first of them (the "leader"), so a stack of LoRAs costs
one extra copy of each touched weight, not one per LoRA, and sampling itself
runs at the speed of the plain model (ComfyUI's own LoRA patching works the
same way; diffusers' peft layers instead add two small matmuls per layer per
step).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace
from typing import Iterator, Optional

import torch

from . import families, lora_control
from . import lora_formats as fmt
from .components import BASE, REFINER, ModelBundle, TextEncoderBundle, model_kind_label
from .model_options import refuse_quantized_lora
from .weight_files import load_plain_tensors
from .hooks import SamplingHook

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_CROSS_ATTENTION_FAMILIES = {768: "SD1.x", 1024: "SD2.x", 1280: "the SDXL refiner", 2048: "SDXL"}
_SHOWN = 5  # how many ignored key names a log line shows


# ------------------------------------------------------------------ files


@dataclass(frozen=True)
class LoadedLora:
    """A LoRA file read into layers; `name` is how the user picked it."""

    name: str
    parsed: fmt.ParsedLora
    # The file's own tensors and metadata: SD3 / Flux read them again through
    # diffusers' converters (lora_dit), which need to know the model's family.
    state_dict: Optional[dict] = None
    metadata: Optional[dict] = None


def read_state_dict(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a LoRA file: safetensors, or a weights-only torch load."""
    lower = path.lower()
    if lower.endswith(SAFETENSORS_SUFFIXES):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt", device="cpu") as handle:
                return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(
                f"lora_name: {os.path.basename(path)!r} is not a readable safetensors file ({exc}); "
                "re-download it or pick another LoRA"
            ) from exc
    if lower.endswith(PICKLE_SUFFIXES):
        data = load_plain_tensors(path, f"lora_name: {os.path.basename(path)!r}")
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise ValueError(f"lora_name: {os.path.basename(path)!r} holds no tensor dictionary")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, {}
    raise ValueError(
        f"lora_name: {os.path.basename(path)!r} has an unsupported extension; use .safetensors "
        f"(or {', '.join(PICKLE_SUFFIXES)})"
    )


def load_lora(path: str, name: Optional[str] = None) -> LoadedLora:
    """Read and parse a LoRA file; `name` (default: the file name) is used in messages."""
    tensors, metadata = read_state_dict(path)
    return lora_from_state_dict(tensors, name or os.path.basename(path), metadata)


def lora_from_state_dict(state_dict: dict, name: str, metadata: Optional[dict] = None) -> LoadedLora:
    return LoadedLora(name, fmt.parse_state_dict(state_dict, metadata), dict(state_dict), metadata)


# ------------------------------------------------------------- matching


class LoraMismatch(ValueError):
    """The LoRA's layer shapes do not fit the model (another model family)."""


def _weighted_modules(module: torch.nn.Module) -> dict[str, str]:
    """kohya-style key -> dotted name for every module with a 2-D or 4-D weight."""
    index = {}
    for name, child in module.named_modules():
        weight = getattr(child, "weight", None)
        if name and isinstance(weight, torch.nn.Parameter) and weight.ndim in (2, 4):
            index[fmt.layer_key(name)] = name
    return index


def _text_encoder_index(encoder: torch.nn.Module) -> dict[str, str]:
    """As `_weighted_modules`, reachable with and without CLIP's `text_model.` level.

    transformers 5 flattened CLIPTextModel (`encoder.layers...`); LoRA files
    name the layers `text_model.encoder.layers...` (transformers 4).
    """
    index = _weighted_modules(encoder)
    for key, name in list(index.items()):
        if key.startswith("text_model_"):
            index.setdefault(key[len("text_model_"):], name)
        else:
            index.setdefault("text_model_" + key, name)
    return index


_TE_ALIASES = (("_self_attn_to_q", "_self_attn_q_proj"), ("_self_attn_to_k", "_self_attn_k_proj"),
               ("_self_attn_to_v", "_self_attn_v_proj"), ("_self_attn_to_out_0", "_self_attn_out_proj"))


def _te_key(key: str) -> str:
    for old, new in _TE_ALIASES:
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def _check_shape(name: str, layer: fmt.LoraLayer, weight: torch.Tensor, wider_input: bool = False) -> None:
    """The LoRA's update must have the weight's shape; `wider_input`: more inputs too (a control LoRA's)."""
    lora_in, lora_out = layer.in_out()
    model_out, model_in = int(weight.shape[0]), int(weight.shape[1])
    kernel_ok = weight.ndim == 2 or layer.kernel() in ((), tuple(weight.shape[2:]))
    inputs_ok = lora_in == model_in or (wider_input and lora_in > model_in and weight.ndim == 2)
    if lora_out != model_out or not inputs_ok or not kernel_ok:
        raise LoraMismatch(
            f"layer {name}: the LoRA has {lora_in} inputs x {lora_out} outputs"
            f"{' (kernel ' + str(layer.kernel()) + ')' if layer.kernel() else ''}, the model's weight is "
            f"{tuple(weight.shape)}"
        )


def match_layers(
    lora: LoadedLora, component: str, module: torch.nn.Module, wider_input: tuple = ()
) -> tuple[dict, list]:
    """({dotted module name: LoraLayer}, [unmatched layer keys]) for one component.

    wider_input: module names whose LoRA update may take more inputs than the weight has (widened per run).
    """
    layers = lora.parsed.layers.get(component, {})
    if not layers:
        return {}, []
    if component == fmt.UNET:
        index = _weighted_modules(module)
        config = module.config
        up_attention = [hasattr(block, "attentions") for block in getattr(module, "up_blocks", [])]
        layers_per_block = config.layers_per_block
        layers_per_block = layers_per_block if isinstance(layers_per_block, int) else layers_per_block[0]

        def find(key):
            if key in index:
                return index[key]
            converted = fmt.sgm_to_diffusers(key, int(layers_per_block), up_attention)
            return index.get(converted) if converted else None
    elif component == fmt.TRANSFORMER:  # SD3 / Flux: diffusers module names, after lora_dit's conversion
        find = _weighted_modules(module).get
    else:
        index = _text_encoder_index(module)

        def find(key):
            return index.get(key) or index.get(_te_key(key))

    matched, unmatched = {}, []
    named = dict(module.named_modules())
    for key, layer in layers.items():
        name = find(key)
        if name is None:
            unmatched.append(key)
            continue
        _check_shape(name, layer, named[name].weight, name in wider_input)
        matched[name] = layer
    return matched, unmatched


def lora_family_hint(parsed: fmt.ParsedLora) -> Optional[str]:
    """What the LoRA seems made for, from its layers (None: no clue)."""
    if parsed.layers.get(fmt.TEXT_ENCODER_2):
        return "SDXL"
    for key, layer in parsed.layers.get(fmt.UNET, {}).items():
        if key.endswith(("attn2_to_k", "attn2_to_v")):
            width = layer.in_out()[0]
            return _CROSS_ATTENTION_FAMILIES.get(width, f"a model with {width}-wide cross-attention")
    return None


def _model_hint(family: str, unet, variant: str = BASE) -> str:
    width = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    label = model_kind_label(family, variant)
    return f"{label}, {width}-wide cross-attention" if width else label


def _mismatch_error(
    lora: LoadedLora, model_name: str, family: str, unet, exc: Exception, variant: str = BASE
) -> ValueError:
    hint = lora_family_hint(lora.parsed)
    made_for = f"looks made for {hint}" if hint else "was made for another model"
    if variant == REFINER:
        return ValueError(
            f"lora_name: {lora.name!r} does not fit the model {model_name!r} ({_model_hint(family, unet, variant)}): "
            f"the LoRA {made_for} ({exc}). LoRAs for SDXL base do not apply to the SDXL refiner, whose UNet "
            "and text encoder differ: apply the LoRA to the base model (the sampler before the hand-off), "
            "or pick a LoRA trained on the refiner."
        )
    return ValueError(
        f"lora_name: {lora.name!r} does not fit the model {model_name!r} ({_model_hint(family, unet)}): "
        f"the LoRA {made_for} ({exc}). Pick a LoRA trained for this model's family, or load a "
        "checkpoint of the LoRA's family."
    )


# --------------------------------------------------------------- merging


def _merge(module: torch.nn.Module, stack: list[tuple[dict, float]]) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Replace each touched weight by its merged copy; returns what to put back.

    The sum is taken in float32 and cast once (the model may be float16). The
    Parameter objects stay, only their tensors change, so the module tree,
    state_dict keys and anything holding the Parameters are unaffected. A
    LoRA with more inputs than the weight (a control LoRA's x_embedder) gets
    the weight widened with zero columns first, as diffusers grows the layer;
    narrower updates of the same layer land on its first columns.
    """
    per_layer: dict[str, list] = {}
    for targets, strength in stack:
        for name, layer in targets.items():
            per_layer.setdefault(name, []).append((layer, strength))
    named = dict(module.named_modules())
    saved: list = []
    try:
        for name, items in per_layer.items():
            child = named[name]
            weight = child.weight
            total = weight.detach().to(torch.float32, copy=True)
            widest = max(layer.in_out()[0] for layer, _ in items)
            if weight.ndim == 2 and widest > total.shape[1]:
                total = torch.nn.functional.pad(total, (0, widest - total.shape[1]))
            for layer, strength in items:
                inputs = layer.in_out()[0]
                shape = (total.shape[0], inputs, *total.shape[2:])
                total[:, :inputs] += layer.delta(shape, weight.device, strength)
            saved.append((weight, weight.data))
            weight.data = total.to(weight.dtype)
            with_bias = [(layer, strength) for layer, strength in items if layer.up_bias is not None]
            if with_bias and getattr(child, "bias", None) is not None:
                # peft's lora_bias: lora_B's bias, scaled like the rest of the update.
                bias = child.bias
                new_bias = bias.detach().to(torch.float32, copy=True)
                for layer, strength in with_bias:
                    new_bias += layer.up_bias.to(bias.device, torch.float32) * (strength * layer.scale)
                saved.append((bias, bias.data))
                bias.data = new_bias.to(bias.dtype)
    except BaseException:
        _restore(saved)
        raise
    return saved


def _restore(saved: list) -> None:
    for param, data in reversed(saved):
        param.data = data
    saved.clear()


# ----------------------------------------------------------------- patches


class UNetLora(SamplingHook):
    """A LoRA on DS_MODEL: merged at `begin`, put back at `end`.

    The first UNetLora among the model's patches merges every LoRA of the
    stack at once; the others find their layers already merged.
    """

    order = -100  # before other hooks: they see the patched UNet from the start
    transformer_ready = True  # merges into any denoiser's weights: SD3 / Flux accept it (flow.check_latent)

    def __init__(self, name: str, targets: dict, strength: float, norms: Optional[dict] = None):
        self.name, self.targets, self.strength = name, targets, float(strength)
        self.norms = dict(norms or {})  # whole weights that replace the model's (Flux control LoRAs' norms)
        self._saved: list = []

    def begin(self, run, role) -> None:
        stack = [p for p in run.model.patches if isinstance(p, UNetLora)]
        if not stack or stack[0] is not self:
            return
        self._saved = _merge(run.model.unet, [(p.targets, p.strength) for p in stack])
        try:
            self._saved += lora_control.replace_norms(run.model.unet, [p.norms for p in stack if p.norms])
        except BaseException:
            _restore(self._saved)
            raise

    def end(self) -> None:
        _restore(self._saved)

    def __repr__(self) -> str:
        return f"UNetLora({self.name!r}, {len(self.targets)} layers, strength={self.strength})"


class TextEncoderLora:
    """A LoRA on DS_TEXT_ENCODER: merged around one prompt encode (text_encoding.patches_applied)."""

    transformer_ready = True  # SD3 / Flux encoders take it too (flow.check_text_bundle)

    def __init__(self, name: str, targets: tuple, strength: float):
        self.name, self.targets, self.strength = name, targets, float(strength)  # targets: one dict per encoder

    @contextlib.contextmanager
    def text_encoder_patch(self, bundle: TextEncoderBundle) -> Iterator[None]:
        stack = [p for p in bundle.patches if isinstance(p, TextEncoderLora)]
        if not stack or stack[0] is not self:
            yield
            return
        saved: list = []
        try:
            for index, encoder in enumerate(bundle.text_encoders):
                per_encoder = [(p.targets[index], p.strength) for p in stack if index < len(p.targets)]
                per_encoder = [(t, s) for t, s in per_encoder if t]
                if per_encoder:
                    saved += _merge(encoder, per_encoder)
            yield
        finally:
            _restore(saved)

    def __repr__(self) -> str:
        return f"TextEncoderLora({self.name!r}, strength={self.strength})"


def apply_lora(
    model: ModelBundle,
    text_encoder: Optional[TextEncoderBundle],
    lora: LoadedLora,
    strength_model: float = 1.0,
    strength_text_encoder: float = 1.0,
) -> tuple[ModelBundle, Optional[TextEncoderBundle]]:
    """New DS_MODEL / DS_TEXT_ENCODER values carrying the LoRA (inputs unchanged).

    Raises ValueError when the LoRA is for another family (layer shapes do not
    fit) or when none of its layers matches the model; layers or keys that do
    not match are counted in a warning. A strength of 0 adds no patch at all.
    """
    encoders = tuple(text_encoder.text_encoders) if text_encoder is not None else ()
    refuse_quantized_lora(lora.name, model.unet, encoders, strength_text_encoder)
    family = families.of(model)
    if family.denoiser_folder == fmt.TRANSFORMER:
        return _apply_dit(model, text_encoder, lora, strength_model, strength_text_encoder)
    family.refuse_adapter(families.LORA, f"lora {lora.name!r}")
    from .lora_dit import dit_lora_family

    made_for = dit_lora_family(lora.state_dict or {})
    if lora.parsed.layers.get(fmt.TRANSFORMER) or made_for not in (None, "UNet"):
        raise ValueError(
            f"lora_name: {lora.name!r} has diffusion-transformer layers: it is {'a ' + made_for if made_for else 'an SD3 / Flux'} "
            f"LoRA, the model {model.name!r} is {_model_hint(model.family, model.unet, model.variant)}. Pick a "
            "LoRA trained for this model's family, or load a checkpoint of the LoRA's family."
        )
    try:
        unet_targets, unet_unmatched = match_layers(lora, fmt.UNET, model.unet)
        te_targets, te_unmatched = [], []
        encoders = tuple(text_encoder.text_encoders) if text_encoder is not None else ()
        # The LoRA's text-encoder components by the family's diffusers folders:
        # the refiner's only encoder is OpenCLIP bigG, SDXL's text_encoder_2.
        slots = families.of(text_encoder).text_encoders if text_encoder is not None else ()
        components = tuple(slot.folder for slot in slots) or (fmt.TEXT_ENCODER, fmt.TEXT_ENCODER_2)
        refiner_te = text_encoder is not None and fmt.TEXT_ENCODER not in components
        for index, component in enumerate(components):
            if index < len(encoders):
                matched, unmatched = match_layers(lora, component, encoders[index])
            else:
                matched, unmatched = {}, list(lora.parsed.layers.get(component, {}))
                if unmatched and text_encoder is not None:
                    raise LoraMismatch(f"it has layers for a text encoder #{index + 1}, the model has {len(encoders)}")
            te_targets.append(matched)
            te_unmatched += unmatched
        if refiner_te and lora.parsed.layers.get(fmt.TEXT_ENCODER):
            raise LoraMismatch(
                "it has layers for SDXL's first text encoder (CLIP-L), which the SDXL refiner does not have"
            )
    except LoraMismatch as exc:
        raise _mismatch_error(
            lora, model.name, model.family, model.unet, exc, model.variant
        ) from exc

    return _patched(model, text_encoder, lora, unet_targets, te_targets, unet_unmatched + te_unmatched,
                    strength_model, strength_text_encoder)


def _widens_input(lora: LoadedLora, model) -> bool:
    """True for a LoRA whose input layer is wider than the model's that may widen it (a FLUX.1 control LoRA
    on FLUX.1 dev, lora_control.py); a ValueError naming both for any other widening LoRA."""
    layer = lora.parsed.layers.get(fmt.TRANSFORMER, {}).get(fmt.layer_key(lora_control.INPUT_LAYER))
    embedder = getattr(model.unet, lora_control.INPUT_LAYER, None)
    if layer is None or embedder is None or layer.in_out()[0] <= int(embedder.weight.shape[1]):
        return False
    why = lora_control.input_widening(layer.in_out()[0], model)
    if why:
        raise ValueError(
            f"lora_name: {lora.name!r} {why}. Apply a Canny/Depth dev LoRA to FLUX.1 dev (then give the map "
            "to Diffusers Flux Control Image), or load the full FLUX.1 Canny dev / Depth dev model without it."
        )
    return True


def _apply_dit(model, text_encoder, lora: LoadedLora, strength_model: float, strength_text_encoder: float):
    """apply_lora for SD3 / Flux: the file read through diffusers' converters, every transformer layer matched.

    A transformer layer the model lacks means the LoRA is for another
    transformer (a Flux LoRA on SD3 names Flux's single blocks): refused,
    naming both, rather than applied in part.
    """
    from .lora_dit import dit_state_dict

    family = families.of(model)
    state = dit_state_dict(lora.state_dict or {}, lora.name, family, model.name)
    state, norms = lora_control.split_norms(state)
    lora_control.check_norms(norms, model.unet, lora.name, model.name)
    lora = replace(lora, parsed=fmt.parse_state_dict(state, lora.metadata))
    strays = [f"{c}:{k}" for c in (fmt.UNET,) for k in lora.parsed.layers.get(c, {})]
    control = _widens_input(lora, model)
    try:
        wider = (lora_control.INPUT_LAYER,) if control else ()
        targets, unmatched = match_layers(lora, fmt.TRANSFORMER, model.unet, wider)
        te_targets, te_unmatched = [], []
        encoders = tuple(text_encoder.text_encoders) if text_encoder is not None else ()
        slots = families.of(text_encoder).text_encoders if text_encoder is not None else family.text_encoders
        for index, slot in enumerate(slots):
            encoder = encoders[index] if index < len(encoders) else None
            if encoder is None:  # SD3 without T5, or no text encoder given
                te_targets.append({})
                te_unmatched += list(lora.parsed.layers.get(slot.folder, {}))
                continue
            matched, missed = match_layers(lora, slot.folder, encoder)
            te_targets.append(matched)
            te_unmatched += missed
    except LoraMismatch as exc:
        raise ValueError(
            f"lora_name: {lora.name!r} does not fit the model {model.name!r} ({family.label}): {exc}. "
            f"Pick a LoRA trained for {family.label}, or load a checkpoint of the LoRA's family."
        ) from exc
    if unmatched or strays:
        missing = (strays + unmatched)[:_SHOWN]
        raise ValueError(
            f"lora_name: {lora.name!r} has {len(strays) + len(unmatched)} layer(s) that the model {model.name!r} "
            f"({family.label}) does not have, e.g. {', '.join(missing)}: the LoRA was made for another model. "
            f"Pick a LoRA trained for {family.label}, or load a checkpoint of the LoRA's family."
        )
    return _patched(model, text_encoder, lora, targets, te_targets, te_unmatched,
                    strength_model, strength_text_encoder, norms=norms, control=control)


def _patched(model, text_encoder, lora, unet_targets, te_targets, unmatched, strength_model, strength_text_encoder,
             norms: Optional[dict] = None, control: bool = False):
    """The new socket values once the layers are matched (or the error when none is).

    norms: whole weights the LoRA replaces (Flux control LoRAs); control: the LoRA widens the input
    layer, so the model it returns is the Canny/Depth dev variant.
    """
    te_total = sum(len(t) for t in te_targets)
    ignored = len(lora.parsed.ignored) + len(unmatched)
    if not unet_targets and not te_total:
        raise ValueError(
            f"lora_name: none of the {lora.parsed.count()} layers / {lora.parsed.count() + len(lora.parsed.ignored)} "
            f"keys of {lora.name!r} matches a layer of {model.name!r} "
            f"({_model_hint(model.family, model.unet, getattr(model, 'variant', BASE))}). "
            "It is not a LoRA for this model, or its format is not supported (diffusers/peft, kohya/A1111 and "
            "LyCORIS LoCon are; LoHa, LoKr and DoRA are not)."
        )
    if ignored:
        examples = (list(lora.parsed.ignored) + unmatched)[:_SHOWN]
        logger.warning(
            "LoRA %r: %d key(s) ignored (not understood or no matching layer in %r), e.g. %s",
            lora.name, ignored, model.name, ", ".join(examples),
        )
    logger.info(
        "LoRA %r (%s): %d denoiser layer(s), %d text-encoder layer(s), strengths %s / %s",
        lora.name, lora.parsed.format, len(unet_targets), te_total, strength_model, strength_text_encoder,
    )

    new_model = model
    if (unet_targets or norms) and strength_model != 0:
        new_model = model.with_patch(UNetLora(lora.name, unet_targets, strength_model, norms))
        if control:
            new_model = lora_control.as_control_model(new_model)
    new_te = text_encoder
    if text_encoder is not None and te_total and strength_text_encoder != 0:
        patch = TextEncoderLora(lora.name, tuple(te_targets), strength_text_encoder)
        new_te = replace(text_encoder, patches=text_encoder.patches + (patch,))
    return new_model, new_te


__all__ = [
    "LoadedLora",
    "TextEncoderLora",
    "UNetLora",
    "apply_lora",
    "load_lora",
    "lora_family_hint",
    "lora_from_state_dict",
    "match_layers",
    "read_state_dict",
]
