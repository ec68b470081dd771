"""DSFluxGuidance: Flux dev's distilled guidance on a prompt (engine/flux_guidance.py)."""
from __future__ import annotations

from comfy_api.latest import io

from .engine.families.flux import DEFAULT_GUIDANCE
from .engine.flux_guidance import MAX_GUIDANCE, with_guidance
from .types import DSConditioning, category


class DSFluxGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSFluxGuidance",
            display_name="Diffusers Flux Guidance",
            category=category("conditioning"),
            description=(
                "Sets Flux.1 dev's distilled guidance on a prompt (FluxPipeline's guidance_scale; ComfyUI's "
                "FluxGuidance). Flux dev reads it as an input instead of running a negative prompt; without "
                "this node it is 3.5. Flux schnell and other families have no guidance embedding and refuse it."
            ),
            inputs=[
                DSConditioning.Input("conditioning", tooltip="A prompt encoded with a Flux.1 dev text encoder."),
                io.Float.Input(
                    "guidance",
                    default=DEFAULT_GUIDANCE,
                    min=0.0,
                    max=MAX_GUIDANCE,
                    step=0.1,
                    tooltip="How strongly Flux dev follows the prompt (3.5 is usual; higher is more literal). "
                    "Keep the sampler's cfg at 1 unless a negative prompt should run as well (true CFG).",
                ),
            ],
            outputs=[DSConditioning.Output(tooltip="The same prompt carrying the guidance, for DSSampler.")],
        )

    @classmethod
    def execute(cls, conditioning, guidance: float = DEFAULT_GUIDANCE) -> io.NodeOutput:
        return io.NodeOutput(with_guidance(conditioning, guidance))


NODES = [DSFluxGuidance]
