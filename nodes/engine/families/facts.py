"""What the pack knows about the model families it loads (SD1.x, SDXL, SDXL refiner).

A single-file checkpoint carries weights but no configuration. Most of the
architecture can be read back from the tensor shapes (see `single_file.py`);
this module holds the rest: the facts that shapes cannot tell, which are fixed
per family, and the real full-size configurations bundled under `configs/`
(copied from the public SD1.5 / SDXL base repositories) that serve as the base
every inferred configuration starts from.

Facts that shapes cannot tell, and the rule used for each:

* attention heads. SD1 UNet: 8 heads at every level (diffusers'
  `attention_head_dim=8`, which diffusers uses as a head count). SDXL UNet:
  head width 64, so heads = channels // 64 per level (5, 10, 20). CLIP text
  towers: head width 64, heads = hidden // 64 (CLIP-L 12, OpenCLIP bigG 20).
* GroupNorm groups (32), activation (CLIP-L `quick_gelu`, bigG `gelu`),
  sample sizes: as in the bundled configs.
* the SDXL refiner (family SDXL, variant REFINER): its own UNet config
  (`configs/sdxl_refiner/unet.json`: 384-wide, four levels, 1280-wide text,
  5 time ids); its VAE, scheduler and bigG text encoder are SDXL base's, so
  those configs are shared. Heads follow the SDXL rule (6, 12, 24, 24).

Test-scale rule. A component narrower than any real SD1/SDXL checkpoint
(UNet base width < 320, VAE base width < 128, text hidden size < 768) cannot
be a real checkpoint: it is a tiny test model. Its unreadable facts follow the
conventions of diffusers' own dummy test components, which
`tests/tiny_models.py` uses, so that a tiny model exported as a single file
loads back as exactly the model it was exported from, through the very same
code path as real weights:

* SD1 UNet: 8 heads, 32 groups; SDXL UNet: head width 16
  (heads = max(1, channels // 16), i.e. (2, 4) for widths (32, 64)), 1 group;
  UNet sample size 32.
* VAE: 8 groups, sample size 64, scaling factor 0.18215 (diffusers' default).
* text towers: head width 8 (heads = max(1, hidden // 8), 4 heads for
  hidden 32), `gelu`.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

from ..components import BASE, FAMILIES, REFINER, SD1, SDXL, VARIANTS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

FAMILY_LABELS = {SD1: "Stable Diffusion 1.x", SDXL: "Stable Diffusion XL (base)"}
REFINER_LABEL = "Stable Diffusion XL refiner"

SUPPORTED_SUMMARY = (
    "Supported: Stable Diffusion 1.x, SDXL base and SDXL refiner checkpoints, as a "
    "single .safetensors file in the original (LDM/A1111) layout or as a diffusers "
    "folder (with model_index.json); SD3 / SD3.5 and Flux.1 dev / schnell as diffusers folders."
)

# Widths of the narrowest real checkpoints; anything narrower is test-scale.
REAL_UNET_MIN_WIDTH = 320
REAL_VAE_MIN_WIDTH = 128
REAL_TEXT_MIN_HIDDEN = 768

# Component files bundled per family.
_CONFIG_FILES = {
    SD1: ("unet", "vae", "text_encoder", "scheduler_config"),
    SDXL: ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler_config"),
}
# What a variant bundles on its own (folder configs/<family>_<variant>); the
# rest is the family's.
_VARIANT_CONFIG_FILES = {(SDXL, REFINER): ("unet",)}


def label_of(family: str, variant: str = BASE) -> str:
    """The long name of a family/variant, for messages."""
    if family == SDXL and variant == REFINER:
        return REFINER_LABEL
    return FAMILY_LABELS.get(family, family)


class ModelLoadError(ValueError):
    """A checkpoint could not be loaded for a reason the user can fix.

    The message names the file, says what was found and what to do. It is a
    ValueError so that ComfyUI reports it as a user error, not a crash.
    """


def _check_family(family: str, variant: str = BASE) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if variant not in VARIANTS or (variant != BASE and (family, variant) not in _VARIANT_CONFIG_FILES):
        raise ValueError(f"{family} has no variant {variant!r}")


@lru_cache(maxsize=None)
def _read_config(folder: str, component: str) -> dict:
    with open(CONFIG_DIR / folder / f"{component}.json", encoding="utf-8") as fh:
        data = json.load(fh)
    return {k: v for k, v in data.items() if k != "_comment"}


def bundled_config(family: str, component: str, variant: str = BASE) -> dict:
    """A fresh copy of the family's full-size config for one component.

    component: "unet", "vae", "text_encoder", "text_encoder_2" (SDXL) or
    "scheduler_config". variant REFINER (SDXL) gives the refiner's own UNet
    config and SDXL base's for the rest.
    """
    _check_family(family, variant)
    if component in _VARIANT_CONFIG_FILES.get((family, variant), ()):
        return copy.deepcopy(_read_config(f"{family}_{variant}", component))
    if component not in _CONFIG_FILES[family]:
        raise ValueError(f"{family} has no bundled {component!r} config")
    return copy.deepcopy(_read_config(family, component))


def scheduler_config(family: str) -> dict:
    """The family's reference scheduler config (as in the real repositories)."""
    return bundled_config(family, "scheduler_config")


# ---------------------------------------------------------------- head rules


def unet_attention_heads(family: str, block_out_channels: list[int]):
    """diffusers' `attention_head_dim` (a head count) for a UNet of this family."""
    _check_family(family)
    if family == SD1:
        return 8
    width = 64 if block_out_channels[0] >= REAL_UNET_MIN_WIDTH else 16
    return [max(1, c // width) for c in block_out_channels]


def text_attention_heads(hidden_size: int) -> int:
    """Heads of a CLIP text tower: head width 64, or 8 at test scale."""
    width = 64 if hidden_size >= REAL_TEXT_MIN_HIDDEN else 8
    return max(1, hidden_size // width)


# ----------------------------------------------------------- unread facts


def unet_facts(family: str, block_out_channels: list[int]) -> dict:
    """UNet config entries that tensor shapes cannot tell."""
    facts = {"attention_head_dim": unet_attention_heads(family, block_out_channels)}
    if block_out_channels[0] < REAL_UNET_MIN_WIDTH:
        facts["norm_num_groups"] = 32 if family == SD1 else 1
        facts["sample_size"] = 32
    return facts


def vae_facts(family: str, block_out_channels: list[int]) -> dict:
    """VAE config entries that tensor shapes cannot tell."""
    _check_family(family)
    if block_out_channels[0] < REAL_VAE_MIN_WIDTH:
        return {"norm_num_groups": 8, "sample_size": 64, "scaling_factor": 0.18215}
    return {}


def text_facts(hidden_size: int) -> dict:
    """Text-tower config entries that tensor shapes cannot tell."""
    facts = {"num_attention_heads": text_attention_heads(hidden_size)}
    if hidden_size < REAL_TEXT_MIN_HIDDEN:
        facts["hidden_act"] = "gelu"
    return facts
