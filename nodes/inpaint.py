"""Inpainting nodes: DSInpaint, DSInpaintComposite, DSInpaintCropToMask, DSInpaintPasteBack.

Thin schemas over engine/inpaint.py. The usual graph:
LoadImage (IMAGE, MASK) -> Diffusers Inpaint -> Diffusers Sampler -> Diffusers
VAE Decode -> Diffusers Inpaint Composite (original pixels outside the mask).
For "inpaint only masked" at full resolution, Crop To Mask goes before
Diffusers Inpaint and Paste Back replaces the composite.
"""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge
from .engine import inpaint
from .engine import posterior
from .types import DSVAE, DSModel, category
from .vae import latent_sampling_error, latent_sampling_input

DSInpaintCrop = io.Custom("DS_INPAINT_CROP")

_MASK_TIP = "Where to repaint: 1 (white) repaints, 0 keeps; values in between change gradually."


class DSInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSInpaint",
            display_name="Diffusers Inpaint",
            category=category("inpaint"),
            description=(
                "Prepares an image and a mask for Diffusers Sampler, which then repaints inside the mask "
                "(its denoise is the inpainting strength). Works with ordinary checkpoints of every family, "
                "SD3 and Flux.1 included (the outside is kept at every step), and with inpainting checkpoints "
                "(9-channel SD UNets and FLUX.1 Fill get the mask and the masked image), detected from the model."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The picture to inpaint; width and height must be multiples of 8."),
                io.Mask.Input(
                    "mask",
                    tooltip=_MASK_TIP + " A mask of another size is resized to the image (logged); one mask "
                    "for the whole batch or one per image.",
                ),
                DSVAE.Input("vae", tooltip="The VAE output of Load Diffusers Model."),
                DSModel.Input(
                    "model",
                    tooltip="The model you will sample with: it tells whether it is an inpainting checkpoint.",
                ),
                io.Int.Input(
                    "grow",
                    default=0,
                    min=-256,
                    max=256,
                    tooltip="Grow the mask by this many pixels (negative shrinks it) before feathering.",
                ),
                io.Float.Input(
                    "blur",
                    default=4.0,
                    min=0.0,
                    max=64.0,
                    step=0.5,
                    tooltip="Feather the mask edge: Gaussian blur sigma in pixels (A1111's mask blur). "
                    "0 keeps a hard edge.",
                ),
                io.Combo.Input(
                    "fill",
                    options=list(inpaint.FILL_MODES),
                    default="original",
                    tooltip="What the masked area starts from (A1111's masked content): original = the picture, "
                    "blurred = colours blurred in from around the mask, noise = random latent noise, "
                    "nothing = empty latents. Matters most with denoise below 1.",
                ),
                io.Int.Input(
                    "fill_seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFF,
                    tooltip="Seed of the noise used by fill = noise (image i uses fill_seed + i).",
                ),
                io.Boolean.Input(
                    "blend_unmasked",
                    default=True,
                    tooltip="Inpainting checkpoints (and FLUX.1 Fill) only: also hold the area outside the mask to "
                    "the original at every step (ComfyUI's and A1111's way). Off gives diffusers' inpaint "
                    "pipeline (FluxFillPipeline) exactly. "
                    "Ordinary checkpoints always blend.",
                ),
                latent_sampling_input(),
            ],
            outputs=[
                io.Latent.Output(
                    display_name="LATENT",
                    tooltip="For Diffusers Sampler: the encoded image with its noise mask (and the inpainting "
                    "model's extra inputs).",
                ),
                io.Mask.Output(
                    display_name="MASK",
                    tooltip="The grown and feathered mask at the image size, for Diffusers Inpaint Composite "
                    "or Paste Back.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, fill: str, latent_sampling: str = posterior.DEFAULT_SAMPLING) -> bool | str:
        if fill not in inpaint.FILL_MODES:
            return f"fill: '{fill}' is not one of {list(inpaint.FILL_MODES)}."
        return latent_sampling_error(latent_sampling) or True

    @classmethod
    def execute(
        cls, image, mask, vae, model, grow: int = 0, blur: float = 4.0, fill: str = "original",
        fill_seed: int = 0, blend_unmasked: bool = True, latent_sampling: str = posterior.DEFAULT_SAMPLING,
    ) -> io.NodeOutput:
        comfy_bridge.load_to_compute_device([vae.vae])
        prepared = inpaint.prepare(
            vae, model, image, mask, grow=grow, blur=blur, fill=fill, seed=fill_seed, blend_unmasked=blend_unmasked,
            latent_sampling=latent_sampling,
        )
        return io.NodeOutput(prepared.latent, prepared.mask)


class DSInpaintComposite(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSInpaintComposite",
            display_name="Diffusers Inpaint Composite",
            category=category("inpaint"),
            description=(
                "Pastes the generated picture into the original through the mask: outside the mask the "
                "original pixels come back exactly, so the VAE never touches them."
            ),
            inputs=[
                io.Image.Input("original", tooltip="The picture that went into Diffusers Inpaint."),
                io.Image.Input("generated", tooltip="The decoded result (Diffusers VAE Decode)."),
                io.Mask.Input("mask", tooltip="The MASK output of Diffusers Inpaint (feathered). " + _MASK_TIP),
            ],
            outputs=[io.Image.Output(tooltip="The original with the masked area repainted.")],
        )

    @classmethod
    def execute(cls, original, generated, mask) -> io.NodeOutput:
        return io.NodeOutput(inpaint.composite(original, generated, mask))


class DSInpaintCropToMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSInpaintCropToMask",
            display_name="Diffusers Inpaint Crop To Mask",
            category=category("inpaint"),
            description=(
                "Inpaint only the masked area at full resolution (A1111's 'only masked'): crops around the "
                "mask with padding and scales the crop to the model's native size, for Diffusers Inpaint. "
                "Diffusers Inpaint Paste Back puts the result back."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The whole picture."),
                io.Mask.Input("mask", tooltip=_MASK_TIP + " The crop is its bounding box plus padding."),
                io.Int.Input(
                    "padding",
                    default=32,
                    min=0,
                    max=4096,
                    tooltip="Pixels of context around the mask's bounding box (the crop then grows to the "
                    "target's aspect ratio).",
                ),
                io.Int.Input(
                    "width",
                    default=0,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="Width the crop is scaled to; 0 = the model's native size (512 SD1.5, 1024 SDXL). "
                    "Rounded to a multiple of 8.",
                ),
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="Height the crop is scaled to; 0 = the model's native size. Rounded to a multiple of 8.",
                ),
                DSModel.Input(
                    "model",
                    optional=True,
                    tooltip="Gives the native size when width or height is 0.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The crop, scaled, for Diffusers Inpaint."),
                io.Mask.Output(display_name="MASK", tooltip="The mask cropped and scaled the same way."),
                DSInpaintCrop.Output(
                    display_name="CROP", tooltip="Where the crop came from, for Diffusers Inpaint Paste Back."
                ),
            ],
        )

    @classmethod
    def execute(cls, image, mask, padding: int = 32, width: int = 0, height: int = 0, model=None) -> io.NodeOutput:
        if (width == 0 or height == 0) and model is None:
            raise ValueError(
                f"width/height: {width}x{height} asks for the model's native size, but no model is "
                "connected: connect the model or set both to a size"
            )
        native = inpaint.native_size(model) if model is not None else 0
        w = inpaint.round_to(width or native, 8)
        h = inpaint.round_to(height or native, 8)
        crops, crop_mask, plan = inpaint.crop_to_mask(image, mask, padding=padding, width=w, height=h)
        return io.NodeOutput(crops, crop_mask, plan)


class DSInpaintPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSInpaintPasteBack",
            display_name="Diffusers Inpaint Paste Back",
            category=category("inpaint"),
            description=(
                "Scales the inpainted crop back and pastes it into the whole picture through the mask; "
                "outside the mask the original pixels come back exactly."
            ),
            inputs=[
                DSInpaintCrop.Input("crop", tooltip="The CROP output of Diffusers Inpaint Crop To Mask."),
                io.Image.Input("image", tooltip="The decoded result for the crop (Diffusers VAE Decode)."),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="The MASK output of Diffusers Inpaint (feathered, crop size); without it the "
                    "crop's own mask is used.",
                ),
            ],
            outputs=[io.Image.Output(tooltip="The whole picture with the masked area repainted.")],
        )

    @classmethod
    def execute(cls, crop, image, mask=None) -> io.NodeOutput:
        return io.NodeOutput(inpaint.paste_back(crop, image, mask))


NODES = [DSInpaint, DSInpaintComposite, DSInpaintCropToMask, DSInpaintPasteBack]
