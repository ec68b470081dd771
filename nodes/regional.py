"""DSRegionalPrompt and DSRectMask: a prompt per region of the picture.

Thin schemas over engine/regional.py, which explains the method (masked
composition of noise predictions in the one DSSampler pass) and its cost.
"""
from __future__ import annotations

from comfy_api.latest import io

from .engine.regional import add_region, rectangle_mask
from .types import DSConditioning, category

UNITS = ["fraction", "pixels"]
MAX_SIZE = 16384


class DSRegionalPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSRegionalPrompt",
            display_name="Diffusers Regional Prompt",
            category=category("regional"),
            description=(
                "Gives one region of the picture its own prompt: inside the mask the region's prompt "
                "guides the image, outside it the base prompt does (InvokeAI's regional guidance, "
                "A1111's Latent Couple). Chain several of these nodes to add regions. Each region "
                "adds one image's worth of work per step to DSSampler (two with a regional negative). "
                "Works for SD1.x and SDXL (with ControlNet and IP-Adapter) and for SD3 and Flux.1 dev / "
                "schnell (with LoRA, their ControlNets and Flux.1's IP-Adapter): the same blending of each "
                "region's prediction by its mask."
            ),
            inputs=[
                DSConditioning.Input(
                    "conditioning",
                    tooltip="The base prompt (Diffusers Text Encode), or the output of another Regional "
                    "Prompt node to add one more region. It guides everywhere no region covers.",
                ),
                io.Mask.Input(
                    "mask",
                    tooltip="Where the region is: 1 = the region's prompt, 0 = untouched, values between "
                    "blend. A mask of another size than the image is resized; SD1.x/SDXL stretch one of "
                    "another aspect ratio, SD3/Flux refuse it (make it at the image's size). One mask for "
                    "the whole batch or one per image. An all-zero mask does nothing.",
                ),
                DSConditioning.Input(
                    "region_conditioning",
                    tooltip="The region's prompt (Diffusers Text Encode with the same model's text encoder; "
                    "SD3/Flux: the same max_sequence_length as the base). It may describe only the region's "
                    "content. Flux dev: the base prompt's guidance applies to every region.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="How much of the region's prompt where the mask is 1: 1 = the region's prompt "
                    "alone, 0.5 = half region, half base prompt, 0 = no effect. Where regions overlap and "
                    "their strengths add up to more than 1, they share the pixels in proportion to their "
                    "strengths and the base prompt drops out there.",
                ),
                DSConditioning.Input(
                    "region_negative",
                    optional=True,
                    tooltip="Optional: a negative prompt for this region only, used inside the mask in "
                    "place of the sampler's negative (same strength and mask). Acts when this node's "
                    "output is the sampler's positive and cfg is above 1 (SD3; Flux with true CFG).",
                ),
            ],
            outputs=[
                DSConditioning.Output(
                    display_name="CONDITIONING",
                    tooltip="The base prompt carrying its regions, for DSSampler's positive (or another "
                    "Regional Prompt node). Connected to the negative, the regions shape the negative prompt.",
                )
            ],
        )

    @classmethod
    def execute(
        cls, conditioning, mask, region_conditioning, strength: float = 1.0, region_negative=None
    ) -> io.NodeOutput:
        return io.NodeOutput(add_region(conditioning, mask, region_conditioning, strength, region_negative))


class DSRectMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSRectMask",
            display_name="Diffusers Rectangle Mask",
            category=category("regional"),
            description=(
                "A rectangular MASK: 1 inside the rectangle, 0 outside, with an optional soft edge. "
                "For regional prompts, inpainting and canvas layers; give the rectangle as fractions "
                "of the picture so it fits any image size."
            ),
            inputs=[
                io.Int.Input("width", default=512, min=8, max=MAX_SIZE, step=8,
                             tooltip="Width of the mask in pixels; use the picture's width "
                             "(a mask of another size is resized where it is used)."),
                io.Int.Input("height", default=512, min=8, max=MAX_SIZE, step=8,
                             tooltip="Height of the mask in pixels; use the picture's height."),
                io.Combo.Input("units", options=UNITS, default="fraction",
                               tooltip="How x, y, rect_width and rect_height are given: fraction of the "
                               "mask's width/height (0..1) or pixels."),
                io.Float.Input("x", default=0.0, min=0.0, max=float(MAX_SIZE), step=0.01,
                               tooltip="Left edge of the rectangle (fraction of the width, or pixels)."),
                io.Float.Input("y", default=0.0, min=0.0, max=float(MAX_SIZE), step=0.01,
                               tooltip="Top edge of the rectangle (fraction of the height, or pixels)."),
                io.Float.Input("rect_width", default=0.5, min=0.0, max=float(MAX_SIZE), step=0.01,
                               tooltip="Width of the rectangle (fraction of the width, or pixels)."),
                io.Float.Input("rect_height", default=1.0, min=0.0, max=float(MAX_SIZE), step=0.01,
                               tooltip="Height of the rectangle (fraction of the height, or pixels)."),
                io.Int.Input("feather", default=0, min=0, max=MAX_SIZE, step=1,
                             tooltip="Soft edge width in pixels: the mask ramps from 0 to 1 across this "
                             "many pixels centred on the rectangle's edge, so regions blend without a seam."),
            ],
            outputs=[io.Mask.Output(tooltip="The mask, [1, height, width], values 0..1.")],
        )

    @classmethod
    def validate_inputs(cls, units: str = "fraction", x: float = 0.0, y: float = 0.0,
                        rect_width: float = 0.5, rect_height: float = 1.0) -> bool | str:
        if units not in UNITS:
            return f"units: '{units}' is not one of {UNITS}."
        if units == "fraction":
            for name, value in (("x", x), ("y", y), ("rect_width", rect_width), ("rect_height", rect_height)):
                if value > 1.0:
                    return (f"{name}: {value} is above 1 with units 'fraction': give a fraction of the "
                            "mask's size (0..1), or set units to 'pixels'.")
        return True

    @classmethod
    def execute(cls, width: int, height: int, units: str, x: float, y: float, rect_width: float,
                rect_height: float, feather: int = 0) -> io.NodeOutput:
        message = cls.validate_inputs(units, x, y, rect_width, rect_height)
        if message is not True:
            raise ValueError(message)
        if units == "fraction":
            x, rect_width = x * width, rect_width * width
            y, rect_height = y * height, rect_height * height
        return io.NodeOutput(rectangle_mask(width, height, x, y, rect_width, rect_height, feather))


NODES = [DSRegionalPrompt, DSRectMask]
