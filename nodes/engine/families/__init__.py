"""Model families: one object per family that the rest of the engine asks.

`of(value)` gives the family of a ModelBundle, TextEncoderBundle, VAEBundle
or Conditioning (its `family` and `variant` fields); `get(family, variant)`
the same from the two strings. The interface is `base.Family` (see
docs/families.md); `facts` holds the bundled configs and the facts tensor
shapes cannot tell, re-exported here for the single-file loaders.
"""
from __future__ import annotations

from ..components import BASE
from .base import CONTROLNET, INPAINT, IP_ADAPTER, LORA, REGIONAL, DenoiserInputs, EncoderSlot, Family, LatentFormat
from .facts import (
    CONFIG_DIR,
    FAMILY_LABELS,
    REAL_TEXT_MIN_HIDDEN,
    REAL_UNET_MIN_WIDTH,
    REAL_VAE_MIN_WIDTH,
    REFINER_LABEL,
    SUPPORTED_SUMMARY,
    ModelLoadError,
    bundled_config,
    label_of,
    scheduler_config,
    text_attention_heads,
    text_facts,
    unet_attention_heads,
    unet_facts,
    vae_facts,
)
from .flow import FlowFamily
from .flux import FLUX_CONTROL_FAMILY, FLUX_DEV_FAMILY, FLUX_FILL_FAMILY, FLUX_SCHNELL_FAMILY
from .sd1 import SD1_FAMILY
from .sd3 import SD3_FAMILY
from .sdxl import SDXL_FAMILY
from .sdxl_refiner import SDXL_REFINER_FAMILY

# (family, variant) -> Family.
REGISTRY: dict[tuple[str, str], Family] = {
    (f.family, f.variant): f
    for f in (
        SD1_FAMILY, SDXL_FAMILY, SDXL_REFINER_FAMILY, SD3_FAMILY, FLUX_DEV_FAMILY, FLUX_SCHNELL_FAMILY, FLUX_FILL_FAMILY,
        FLUX_CONTROL_FAMILY,
    )
}
ALL: tuple[Family, ...] = tuple(REGISTRY.values())


def get(family: str, variant: str = BASE) -> Family:
    """The Family of a (family, variant) pair; ValueError naming both when unknown."""
    found = REGISTRY.get((family, variant or BASE))
    if found is None:
        known = ", ".join(f"{f.family}/{f.variant}" for f in ALL)
        raise ValueError(f"model family {family!r} (variant {variant!r}) is not supported; known: {known}")
    return found


def for_pipeline_class(class_name) -> "Family | None":
    """The transformer family whose diffusers folders carry this model_index `_class_name` (None: none).

    The UNet families are told apart by their folder contents (loading._folder_family).
    """
    for found in ALL:
        if isinstance(found, FlowFamily) and class_name in found.pipeline_classes:
            return found
    return None


def of(value) -> Family:
    """The Family of a socket value (anything with `family` and optionally `variant`)."""
    return get(value.family, getattr(value, "variant", BASE))


__all__ = [
    "ALL", "CONFIG_DIR", "CONTROLNET", "DenoiserInputs", "EncoderSlot", "FAMILY_LABELS", "Family", "FlowFamily",
    "INPAINT", "IP_ADAPTER", "for_pipeline_class",
    "LORA", "LatentFormat", "ModelLoadError", "REAL_TEXT_MIN_HIDDEN", "REAL_UNET_MIN_WIDTH", "REAL_VAE_MIN_WIDTH",
    "REFINER_LABEL", "REGIONAL", "REGISTRY", "SUPPORTED_SUMMARY", "bundled_config", "get", "label_of", "of",
    "scheduler_config", "text_attention_heads", "text_facts", "unet_attention_heads", "unet_facts", "vae_facts",
]
