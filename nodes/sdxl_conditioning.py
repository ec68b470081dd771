"""SDXL's micro-conditioning on a prompt (engine/size_conditioning.py).

DSSDXLSizeConditioning: original size, crop and target size (SDXL base and refiner).
DSSDXLAestheticScore: the SDXL refiner's aesthetic score, one per prompt.
"""
from __future__ import annotations

from comfy_api.latest import io

from .engine.families.sdxl import DEFAULT_AESTHETIC_SCORE
from .engine.size_conditioning import MAX_AESTHETIC_SCORE, MAX_SIDE, with_aesthetic_score, with_size_conditioning
from .types import DSConditioning, category


def _side(name: str, default: int, tooltip: str) -> io.Int.Input:
    return io.Int.Input(name, default=default, min=0, max=MAX_SIDE, step=8, tooltip=tooltip)


class DSSDXLSizeConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSSDXLSizeConditioning",
            display_name="Diffusers SDXL Size Conditioning",
            category=category("conditioning"),
            description=(
                "Sets SDXL's size and crop conditioning on a prompt (diffusers' original_size, "
                "crops_coords_top_left and target_size; ComfyUI's CLIPTextEncodeSDXL widgets). Put one on "
                "the positive and, if wanted, one on the negative prompt."
            ),
            inputs=[
                DSConditioning.Input("conditioning", tooltip="An SDXL (or SDXL refiner) prompt from Diffusers "
                                     "Text Encode."),
                _side("original_width", 1024, "The width SDXL is told the source image had. Smaller values "
                      "look lower-resolution; 0 = the size being generated (the default without this node)."),
                _side("original_height", 1024, "The height SDXL is told the source image had; 0 = the size "
                      "being generated."),
                _side("crop_left", 0, "How far from the left the source image was cropped, in pixels; "
                      "0 (no crop) gives centred subjects."),
                _side("crop_top", 0, "How far from the top the source image was cropped, in pixels; 0 = no crop."),
                _side("target_width", 0, "The target width (SDXL base only; the refiner ignores it); 0 = the "
                      "size being generated."),
                _side("target_height", 0, "The target height (SDXL base only); 0 = the size being generated."),
            ],
            outputs=[DSConditioning.Output(display_name="CONDITIONING",
                                           tooltip="The prompt with its size conditioning, for Diffusers Sampler.")],
        )

    @classmethod
    def execute(cls, conditioning, original_width: int = 1024, original_height: int = 1024, crop_left: int = 0,
                crop_top: int = 0, target_width: int = 0, target_height: int = 0) -> io.NodeOutput:
        return io.NodeOutput(with_size_conditioning(
            conditioning, original_width=original_width, original_height=original_height, crop_left=crop_left,
            crop_top=crop_top, target_width=target_width, target_height=target_height,
        ))


class DSSDXLAestheticScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSSDXLAestheticScore",
            display_name="Diffusers SDXL Aesthetic Score",
            category=category("conditioning"),
            description=(
                "Sets the SDXL refiner's aesthetic score on a prompt (diffusers' aesthetic_score and "
                "negative_aesthetic_score; the ascore of ComfyUI's CLIPTextEncodeSDXLRefiner). Use one on the "
                "refiner's positive prompt and, if wanted, one on its negative; a prompt without one gets "
                "diffusers' default (6 positive, 2.5 negative). Only the refiner takes it: other models refuse it."
            ),
            inputs=[
                DSConditioning.Input("conditioning", tooltip="A prompt encoded with the SDXL refiner's "
                                     "TEXT_ENCODER (Diffusers Text Encode)."),
                io.Float.Input(
                    "aesthetic_score", default=DEFAULT_AESTHETIC_SCORE, min=0.0, max=MAX_AESTHETIC_SCORE, step=0.1,
                    round=0.01,
                    tooltip="The score this prompt asks for; the refiner was trained on about 0-10, higher looks "
                    "more 'aesthetic'. Usual: 6 on the positive prompt, 2.5 on the negative (A1111's refiner "
                    "high/low aesthetic score settings).",
                ),
            ],
            outputs=[DSConditioning.Output(display_name="CONDITIONING",
                                           tooltip="The prompt with its aesthetic score, for Diffusers Sampler.")],
        )

    @classmethod
    def execute(cls, conditioning, aesthetic_score: float = DEFAULT_AESTHETIC_SCORE) -> io.NodeOutput:
        return io.NodeOutput(with_aesthetic_score(conditioning, aesthetic_score))


NODES = [DSSDXLSizeConditioning, DSSDXLAestheticScore]
