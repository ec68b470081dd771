"""DSTextEncode: a prompt to DS_CONDITIONING (chunked, weighted, clip skip)."""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge
from .engine.text_encoding import encode_prompt
from .types import DSConditioning, DSTextEncoder, category


class DSTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSTextEncode",
            display_name="Diffusers Text Encode",
            category=category("conditioning"),
            description=(
                "Encodes a prompt with the model's text encoder(s). Long prompts are encoded in "
                "75-token chunks instead of being cut off; A1111 emphasis such as (word:1.3), "
                "(word) and [word] is honoured, and BREAK starts a new chunk."
            ),
            inputs=[
                DSTextEncoder.Input(
                    "text_encoder",
                    tooltip="The TEXT_ENCODER output of Load Diffusers Model; for the SDXL refiner, the "
                    "refiner's own (its prompts are encoded with OpenCLIP bigG alone).",
                ),
                io.String.Input(
                    "text",
                    multiline=True,
                    dynamic_prompts=True,
                    default="",
                    tooltip="The prompt. (word:1.3) weights a phrase, (word) is x1.1, [word] is /1.1; "
                    "an empty prompt is allowed (typical for a negative prompt).",
                ),
                io.Int.Input(
                    "clip_skip",
                    default=1,
                    min=1,
                    max=12,
                    tooltip="A1111's 'Clip skip': 1 uses the last text-encoder layer, 2 the one "
                    "before it (common for anime SD1.5 models). SDXL (and its refiner) already uses "
                    "the penultimate layer at 1.",
                ),
            ],
            outputs=[
                DSConditioning.Output(
                    display_name="CONDITIONING",
                    tooltip="The encoded prompt, for DSSampler's positive or negative input.",
                )
            ],
        )

    @classmethod
    def execute(cls, text_encoder, text: str, clip_skip: int = 1) -> io.NodeOutput:
        comfy_bridge.load_to_compute_device(text_encoder.text_encoders)
        return io.NodeOutput(encode_prompt(text_encoder, text, clip_skip=clip_skip))


NODES = [DSTextEncode]
