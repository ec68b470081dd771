"""FLUX.1 control LoRAs (BFL's Canny / Depth dev LoRAs) on FLUX.1 dev, for one run.

A control LoRA turns FLUX.1 dev into FLUX.1 Canny/Depth dev: besides low-rank
updates of the usual layers it trains an `x_embedder` that takes twice the
packed latent channels (the latents and the control image's latents, 128 for
the real model), and it ships whole RMSNorm scales for the attention's q/k
norms (`norm_q`, `norm_k`, `norm_added_q`, `norm_added_k`), which replace the
model's. diffusers' FluxLoraLoaderMixin grows the transformer's input layer
(zero columns for the new inputs, the LoRA update on top) and overwrites those
norms; the pack does the same for the duration of one sampling run, through
lora.py's merge (a wider weight tensor, then the original tensor put back)
and `replace_norms` below, so the cached model is restored bit for bit.

The norms are overwritten whatever the LoRA's strength, as diffusers does
(`set_adapters` scales the low-rank updates only). The DS_MODEL that carries
the LoRA is the Canny/Depth dev variant (families.flux's input_channels reads
the widened input from it), so Diffusers Flux Control Image accepts it and a
run without a control image is refused by name.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from . import lora_formats as fmt
from .components import CONTROL, DEV, FLUX

INPUT_LAYER = "x_embedder"
NORM_NAMES = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")  # diffusers' control-LoRA norm keys
_PREFIX = fmt.TRANSFORMER + "."


def split_norms(state: dict) -> tuple[dict, dict]:
    """(the LoRA's tensors without whole norm weights, {transformer parameter name: norm weight})."""
    norms, rest = {}, {}
    for key, value in state.items():
        inner = key[len(_PREFIX):] if key.startswith(_PREFIX) else None
        parts = inner.split(".") if inner else ()
        if inner and "lora" not in inner and len(parts) >= 2 and parts[-2] in NORM_NAMES:
            norms[inner] = value
        else:
            rest[key] = value
    return rest, norms


def check_norms(norms: dict, transformer: torch.nn.Module, name: str, model_name: str) -> None:
    """Every replaced norm must be one of the transformer's, of the same size (else: another model)."""
    params = dict(transformer.named_parameters())
    for key, value in norms.items():
        param = params.get(key)
        if param is None or tuple(param.shape) != tuple(value.shape):
            have = "no such parameter" if param is None else f"the model's is {tuple(param.shape)}"
            raise ValueError(
                f"lora_name: {name!r} replaces the norm weight {key} with a {tuple(value.shape)} tensor, but "
                f"{have} in {model_name!r}: the LoRA was made for another Flux transformer. Pick a LoRA "
                "trained for this model."
            )


def input_widening(lora_in: int, model) -> Optional[str]:
    """None when a LoRA whose input layer takes `lora_in` channels may widen `model`'s, else why not."""
    model_in = int(model.unet.x_embedder.weight.shape[1])
    if lora_in == 2 * model_in and (model.family, model.variant) == (FLUX, DEV):
        return None
    return (
        f"widens the transformer's input from {model_in} to {lora_in} channels, which only a FLUX.1 control LoRA "
        f"(Canny / Depth dev LoRA: twice the input, {2 * model_in}) on FLUX.1 dev does, and the model is "
        f"{'FLUX.1 dev' if model.variant == DEV else model.variant!r}"
    )


def as_control_model(model):
    """The DS_MODEL value that carries a control LoRA: the Canny/Depth dev variant of the same modules."""
    return replace(model, variant=CONTROL)


def replace_norms(transformer: torch.nn.Module, norm_sets: list[dict]) -> list:
    """Put each LoRA's norm weights in place (a later LoRA's win); returns what lora._restore puts back."""
    params = dict(transformer.named_parameters())
    saved: list = []
    for norms in norm_sets:
        for key, value in norms.items():
            param = params[key]
            saved.append((param, param.data))
            param.data = value.to(device=param.device, dtype=param.dtype)
    return saved


__all__ = ["INPUT_LAYER", "NORM_NAMES", "as_control_model", "check_norms", "input_widening", "replace_norms",
           "split_norms"]
