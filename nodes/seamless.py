"""DSSeamlessTiling: a model and VAE whose pictures tile without a seam (A1111's "Tiling").

Thin: engine/seamless.py makes new DS_MODEL and DS_VAE values carrying the
patch; the sampler and the VAE codec switch the convolutions to circular
padding for one run and restore them after, so the cached model is never
changed and the same loader can feed a tiled and an untiled branch.
"""
from __future__ import annotations

from comfy_api.latest import io

from .engine.seamless import AXES, BOTH, with_seamless
from .types import DSVAE, DSModel, category


class DSSeamlessTiling(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSSeamlessTiling",
            display_name="Diffusers Seamless Tiling",
            category=category("loaders"),
            description=(
                "Makes the model and its VAE produce pictures that repeat without a visible seam "
                "(textures, patterns, wallpapers): their convolutions wrap around the edges "
                "(A1111's Tiling option). Use the MODEL for the sampler and the VAE for decoding; "
                "the loaded model itself is not changed."
            ),
            inputs=[
                DSModel.Input("model", tooltip="The MODEL from Load Diffusers Model (or a LoRA / IP-Adapter node)."),
                DSVAE.Input("vae", tooltip="The VAE from Load Diffusers Model: it must wrap too, or the decoded "
                            "edges would not meet."),
                io.Combo.Input(
                    "axes",
                    options=list(AXES),
                    default=BOTH,
                    tooltip="Which edges meet: both (tiles in every direction), x only (left meets right), "
                    "y only (top meets bottom).",
                ),
            ],
            outputs=[
                DSModel.Output(display_name="MODEL", tooltip="The model that tiles, for Diffusers Sampler."),
                DSVAE.Output(display_name="VAE", tooltip="The VAE that tiles, for Diffusers VAE Decode / Encode "
                             "(decode untiled: the VAE's own tiles would break the wrap)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, axes: str = BOTH):
        if axes not in AXES:
            return f"axes: {axes!r} is not one of {list(AXES)}."
        return True

    @classmethod
    def execute(cls, model, vae, axes: str = BOTH) -> io.NodeOutput:
        new_model, new_vae = with_seamless(model, vae, axes)
        return io.NodeOutput(new_model, new_vae)


NODES = [DSSeamlessTiling]
