"""DSTextEncode: a prompt to DS_CONDITIONING (chunked, weighted, edited per step, clip skip)."""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge, embedding_files
from .engine.prompt_editing import encode_with_editing
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
                "(word) and [word] is honoured, BREAK starts a new chunk, and A1111's prompt editing "
                "[from:to:when] and alternation [a|b] change the prompt during sampling. SD3 and Flux "
                "prompts are plain text for CLIP + T5 (see the text tooltip)."
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
                    "[cat:dog:0.5] draws cat, then dog from half the steps on (a number without a decimal "
                    "point is a step), [dog:10] adds dog after step 10, [cat::10] removes cat, [cat|dog] "
                    "alternates every step. A textual-inversion embedding from models/embeddings is used by its "
                    "name (easynegative) or as embedding:easynegative. An empty prompt is allowed (typical for "
                    "a negative prompt). SD3 and Flux read one window per encoder: emphasis, prompt editing and "
                    "alternation work as above, BREAK is removed with a warning (no chunks), CLIP sees the first 75 "
                    "tokens and T5 max_sequence_length tokens (the rest is cut with a warning).",
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
                io.Int.Input(
                    "first_pass_steps",
                    default=0,
                    min=0,
                    max=10000,
                    optional=True,
                    tooltip="Only for the prompt of a hires-fix (second) pass: the first pass's steps. "
                    "Prompt editing then works as A1111's hires fix: step numbers count on from the first "
                    "pass and fractions from 1 to 2 address this pass ([a:b:1.5] switches halfway through "
                    "it). 0 (default): a normal pass.",
                ),
                io.Boolean.Input(
                    "old_prompt_editing_timelines",
                    default=False,
                    optional=True,
                    tooltip="A1111's 'Use old prompt editing timelines': when on, any number below 1 is a "
                    "fraction of the steps and any other a step number; off (A1111 1.6+), a number with a "
                    "decimal point is a fraction (so 1.0 is the end) and one without a step.",
                ),
                io.Int.Input(
                    "max_sequence_length",
                    default=0,
                    min=0,
                    max=512,
                    optional=True,
                    tooltip="SD3 and Flux only: how many T5 tokens the prompt is padded or cut to. 0 (default) "
                    "takes the family's: 256 for SD3 and Flux schnell, 512 for Flux dev. SD1.x/SDXL: leave 0.",
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
    def execute(
        cls,
        text_encoder,
        text: str,
        clip_skip: int = 1,
        first_pass_steps: int = 0,
        old_prompt_editing_timelines: bool = False,
        max_sequence_length: int = 0,
    ) -> io.NodeOutput:
        # SD3 without T5 holds None in its place.
        comfy_bridge.load_to_compute_device([e for e in text_encoder.text_encoders if e is not None])
        options = {"max_sequence_length": max_sequence_length} if max_sequence_length else {}
        return io.NodeOutput(
            encode_with_editing(
                text_encoder,
                text,
                clip_skip=clip_skip,
                first_pass_steps=first_pass_steps,
                old_timelines=old_prompt_editing_timelines,
                embeddings=embedding_files.library(),
                **options,
            )
        )


NODES = [DSTextEncode]
