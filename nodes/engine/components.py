"""The values that travel on the pack's sockets.

They are plain frozen dataclasses so that ComfyUI's output cache can hold them
between prompts without anyone mutating them: a node that wants a variant (a
LoRA, an IP-Adapter, a ControlNet) returns a new value with a longer `patches`
tuple instead of changing the cached modules. The sampler applies the patches
for one run and restores everything afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

SD1 = "sd1"
SDXL = "sdxl"
SD3 = "sd3"
FLUX = "flux"
FAMILIES = (SD1, SDXL, SD3, FLUX)

# Variants within a family. The SDXL refiner is family SDXL (same VAE and
# latent space, same scheduler, previews and float16 rules) with variant
# REFINER: one text encoder (OpenCLIP bigG), 1280-wide text embeddings and
# five time ids (original size, crop top-left, aesthetic score).
BASE = "base"
REFINER = "refiner"
# Flux.1's two releases: dev is guidance-distilled (a guidance embedding, 512
# T5 tokens), schnell is timestep-distilled (no guidance, 256 T5 tokens).
DEV = "dev"
SCHNELL = "schnell"
# FLUX.1 Fill: dev's transformer taking the masked image and an 8x8 pixel mask
# per latent pixel next to the latents (in_channels 384 = 64 + 64 + 256 packed).
FILL = "fill"
# FLUX.1 Canny dev / Depth dev: dev's transformer taking a control image's
# latents next to the latents (in_channels 128 = 64 + 64 packed).
CONTROL = "control"
VARIANTS = (BASE, REFINER, DEV, SCHNELL, FILL, CONTROL)


def compute_dtype(module: Any) -> torch.dtype:
    """The dtype a module computes in: its `dtype`, unless its weights are stored in another.

    A text encoder stored in float8 (DSTextEncoderOptions) reports float8 as
    its `dtype` (transformers looks at the parameters); it computes in the
    dtype it was loaded with, which the stored copy records as
    `_ds_compute_dtype`. Outputs are cast to this, as the pipelines cast to
    `text_encoder.dtype`.
    """
    return module.__dict__.get("_ds_compute_dtype") or module.dtype


def model_kind_label(family: str, variant: str = BASE) -> str:
    """How messages name a model kind: "SD1.x", "SDXL", "SDXL refiner" (the family's short label)."""
    from . import families  # families imports this module

    spec = families.REGISTRY.get((family, variant))
    return spec.short_label if spec is not None else family


@dataclass(frozen=True)
class ModelBundle:
    """DS_MODEL: the denoiser of one checkpoint plus what sampling needs."""

    family: str
    name: str
    unet: Any  # diffusers UNet2DConditionModel
    scheduler_config: dict
    dtype: torch.dtype
    # The checkpoint VAE's scaling_factor: LATENT sockets hold unscaled latents
    # (ComfyUI's convention) and the sampler scales them into the UNet's space.
    latent_scaling_factor: float = 0.18215
    vae_scale_factor: int = 8
    patches: tuple = ()
    variant: str = BASE  # REFINER for the SDXL refiner (aesthetic-score time ids)
    # The VAE's shift_factor (SD3, Flux): the denoiser sees (latents - shift) * scale.
    latent_shift_factor: float = 0.0

    @property
    def denoiser(self) -> Any:
        """The UNet (for the families to come, their transformer): what is called every step.

        It lives in the `unet` field, which the adapters and hosts already use.
        """
        return self.unet

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def is_refiner(self) -> bool:
        return self.variant == REFINER

    def with_patch(self, patch: Any) -> "ModelBundle":
        return replace(self, patches=self.patches + (patch,))


@dataclass(frozen=True)
class TextEncoderBundle:
    """DS_TEXT_ENCODER: one (SD1.x, SDXL refiner) or two (SDXL) tokenizer/encoder pairs.

    The SDXL refiner's single pair is the OpenCLIP bigG encoder (SDXL base's
    second one).
    """

    family: str
    name: str
    tokenizers: tuple
    text_encoders: tuple
    patches: tuple = ()
    variant: str = BASE
    # SD3 without its T5 (text_encoder_3 null): the width of the zeros that
    # stand in for T5 (the transformer's joint_attention_dim), as diffusers.
    joint_width: int = 0

    @property
    def is_refiner(self) -> bool:
        return self.variant == REFINER


@dataclass(frozen=True)
class VAEBundle:
    """DS_VAE: the autoencoder; latents on sockets are unscaled (ComfyUI's way)."""

    family: str
    name: str
    vae: Any  # diffusers AutoencoderKL
    variant: str = BASE
    # Per-call patches (seamless tiling), applied around one encode or decode by vae_codec.
    patches: tuple = ()

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


@dataclass(frozen=True)
class Conditioning:
    """DS_CONDITIONING: the encoded prompt of one text.

    `embeds` is [1, 77*k, D] for k chunks of 75 tokens. `empty_chunk` is the
    encoding of an empty 77-token chunk, used by the sampler to pad the shorter
    of the positive and negative prompts to the same length (as A1111 does).
    `pooled` is set for SDXL. `size_conditioning` optionally overrides SDXL's
    micro-conditioning (original size, crop top-left, target size); None means
    "the size being generated, no crop", as diffusers defaults. For the SDXL
    refiner it may also hold "aesthetic_score", which then wins over the
    sampler's aesthetic_score / negative_aesthetic_score for this prompt.
    `variant` is the text encoder's (REFINER: encoded for the SDXL refiner).
    """

    family: str
    embeds: torch.Tensor
    empty_chunk: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    size_conditioning: Optional[dict] = None
    extras: tuple = field(default=())
    variant: str = BASE
    # Flux dev's distilled guidance (DSFluxGuidance sets it; None: the family default).
    guidance: Optional[float] = None

    def with_extra(self, extra: Any) -> "Conditioning":
        return replace(self, extras=self.extras + (extra,))
