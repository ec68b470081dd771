"""Flux dev's distilled guidance, carried on a prompt (DSFluxGuidance).

Flux dev was distilled to take the guidance scale as an input embedding
instead of running a negative prompt; ComfyUI's FluxGuidance node puts the
value on the conditioning, and so does the pack: the family reads
`Conditioning.guidance` when it builds the transformer's inputs.
"""
from __future__ import annotations

from dataclasses import replace

from . import families
from .components import Conditioning

MAX_GUIDANCE = 100.0


def with_guidance(conditioning: Conditioning, guidance: float) -> Conditioning:
    """A copy of `conditioning` carrying `guidance`; refused for models without a guidance embedding."""
    if not isinstance(conditioning, Conditioning):
        raise ValueError(f"conditioning must be a DS_CONDITIONING, got {type(conditioning).__name__}")
    family = families.of(conditioning)
    if not family.guidance_embedding:
        raise ValueError(
            f"conditioning was encoded for {family.label}, which has no guidance embedding (only Flux.1 dev "
            "has one): remove Diffusers Flux Guidance and set the sampler's cfg instead"
        )
    if not 0.0 <= float(guidance) <= MAX_GUIDANCE:
        raise ValueError(f"guidance must be between 0 and {MAX_GUIDANCE}, got {guidance}: Flux dev's usual is 3.5")
    return replace(conditioning, guidance=float(guidance))
