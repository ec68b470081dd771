"""LoRA files for the diffusion-transformer families (SD3 / SD3.5, Flux.1).

The merge itself is lora.py's (per run, restored bit for bit); what differs
for a transformer is reading the file and telling which family it is for:

* diffusers / peft files (`transformer.<module>.lora_A.weight`,
  `text_encoder.<module>...`) are read by lora_formats as they are;
* every other Flux spelling -- kohya / sd-scripts (`lora_unet_double_blocks_...`,
  `lora_te1_...`), ComfyUI's saved files (`diffusion_model.double_blocks...`,
  `text_encoders.clip_l...`), XLabs (`double_blocks.0.processor.proj_lora1...`),
  BFL control LoRAs -- is converted by diffusers' own FluxLoraLoaderMixin
  .lora_state_dict (the public entry to lora_conversion_utils' converters,
  which picks the right one), so the pack follows diffusers' key mapping
  release by release instead of keeping a copy of it. Those converters bake
  alpha / rank into the weights, so the result has scale 1;
* kohya / ComfyUI T5 layers are dropped by that converter (a warning says so);
  T5 layers in diffusers format (`text_encoder_2.*` for Flux, `text_encoder_3.*`
  for SD3) are applied;
* SD3: diffusers reads only its own format (0.42 has no kohya SD3 converter),
  so other SD3 spellings are refused by name.

Which family a file is for: kohya / ComfyUI Flux keys name `double_blocks` /
`single_blocks`; diffusers Flux keys `single_transformer_blocks`, `x_embedder`
or the guidance embedder; SD3 keys `pos_embed`, `joint_blocks`. A file with
UNet layers (`lora_unet_down_blocks...`, `unet.`) is for SD1.x / SDXL.
"""
from __future__ import annotations

import logging
from typing import Optional

from . import lora_formats as fmt

logger = logging.getLogger(__name__)

FLUX_LABEL = "Flux.1"
SD3_LABEL = "SD3"
_FLUX_NATIVE = ("double_blocks", "single_blocks")  # BFL / kohya / ComfyUI / XLabs block names
_FLUX_DIFFUSERS = ("single_transformer_blocks", "x_embedder", "time_text_embed.guidance_embedder")
_SD3_MARKS = ("joint_blocks", "pos_embed.proj")


def _diffusers_prefixed(state_dict: dict) -> bool:
    return any(k.startswith((fmt.TRANSFORMER + ".", fmt.TEXT_ENCODER + ".", fmt.TEXT_ENCODER_2 + ".",
                             fmt.TEXT_ENCODER_3 + ".")) for k in state_dict)


def dit_lora_family(state_dict: dict) -> Optional[str]:
    """The DiT family a LoRA's keys name ("Flux.1", "SD3"), "UNet" for SD1.x/SDXL, None: no clue."""
    keys = list(state_dict)
    if any(mark in k for k in keys for mark in _FLUX_NATIVE + _FLUX_DIFFUSERS):
        return FLUX_LABEL
    if any(mark in k for k in keys for mark in _SD3_MARKS):
        return SD3_LABEL
    unet_marks = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")
    if any(k.startswith(("lora_unet_", "unet.")) and any(m in k for m in unet_marks) for k in keys):
        return "UNet"
    return None


def _refusal(name: str, model_name: str, model_label: str, made_for: str) -> ValueError:
    what = "an SD1.x / SDXL (UNet)" if made_for == "UNet" else f"a {made_for}"
    return ValueError(
        f"lora_name: {name!r} is {what} LoRA, the model {model_name!r} is {model_label}: pick a LoRA "
        f"trained for {model_label}, or load a checkpoint of the LoRA's family"
    )


def dit_state_dict(state_dict: dict, name: str, family, model_name: str) -> dict:
    """The LoRA's tensors in diffusers' keys for `family` (a FlowFamily), or a ValueError naming both.

    Raised before anything is merged: a LoRA of another family (SD1/SDXL on
    Flux, Flux on SD3, ...) and a spelling diffusers cannot convert.
    """
    is_flux = family.family == "flux"
    own = FLUX_LABEL if is_flux else SD3_LABEL
    made_for = dit_lora_family(state_dict)
    if made_for is not None and made_for != own:
        raise _refusal(name, model_name, family.label, made_for)
    if _diffusers_prefixed(state_dict) and not any(".lora_down." in k for k in state_dict):
        return state_dict
    if not is_flux:
        raise ValueError(
            f"lora_name: {name!r} is not in diffusers' SD3 LoRA format (transformer.* / text_encoder.* "
            f"keys with lora_A / lora_B), the only SD3 format diffusers reads, and {model_name!r} is "
            f"{family.label}: convert the LoRA to the diffusers format, or pick one saved by diffusers / peft"
        )
    from diffusers import FluxPipeline

    t5 = [k for k in state_dict if k.startswith(("lora_te2_", "text_encoders.t5xxl."))]
    if t5:
        logger.warning(
            "LoRA %r: its %d T5 key(s) are not applied: diffusers' Flux converter drops T5 layers of kohya / "
            "ComfyUI files (save the LoRA in the diffusers format, text_encoder_2.*, to keep them)", name, len(t5),
        )
    try:
        converted = FluxPipeline.lora_state_dict(dict(state_dict))
    except (ValueError, KeyError, RuntimeError, IndexError) as exc:
        raise ValueError(
            f"lora_name: {name!r} could not be read as a Flux LoRA by diffusers' converters "
            f"({type(exc).__name__}: {str(exc)[:200]}); {model_name!r} is {family.label}: pick a Flux LoRA in "
            "the diffusers/peft, kohya, ComfyUI, XLabs or BFL format"
        ) from exc
    return converted


__all__ = ["FLUX_LABEL", "SD3_LABEL", "dit_lora_family", "dit_state_dict"]
