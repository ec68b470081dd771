"""DSVAEDecode and DSVAEEncode: between ComfyUI IMAGE and LATENT with a DS_VAE."""
from __future__ import annotations

from comfy_api.latest import io

from . import comfy_bridge
from .engine import vae_codec
from .types import DSVAE, category

_TILED_TIP = "Process the image in overlapping tiles to save memory on large images (slightly slower)."
_TILE_SIZE_TIP = "Tile size in pixels when tiled is on."


def _tile_inputs() -> list:
    return [
        io.Boolean.Input("tiled", default=False, tooltip=_TILED_TIP),
        io.Int.Input("tile_size", default=512, min=128, max=4096, step=64, tooltip=_TILE_SIZE_TIP),
    ]


class DSVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSVAEDecode",
            display_name="Diffusers VAE Decode",
            category=category("latent"),
            description="Turns a latent into an image with the model's VAE.",
            inputs=[
                DSVAE.Input("vae", tooltip="The VAE output of Load Diffusers Model."),
                io.Latent.Input("samples", tooltip="The latent to decode (from Diffusers Sampler)."),
                *_tile_inputs(),
            ],
            outputs=[io.Image.Output(tooltip="The decoded images, for Save Image or Preview Image.")],
        )

    @classmethod
    def execute(cls, vae, samples, tiled: bool = False, tile_size: int = 512) -> io.NodeOutput:
        comfy_bridge.load_to_compute_device([vae.vae])
        images = vae_codec.decode(vae, samples["samples"], tiled=tiled, tile_size=tile_size)
        return io.NodeOutput(images)


class DSVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSVAEEncode",
            display_name="Diffusers VAE Encode",
            category=category("latent"),
            description="Turns an image into a latent with the model's VAE, for image-to-image.",
            inputs=[
                DSVAE.Input("vae", tooltip="The VAE output of Load Diffusers Model."),
                io.Image.Input(
                    "pixels",
                    tooltip="The image to encode; width and height must be multiples of 8.",
                ),
                *_tile_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The encoded latent, for Diffusers Sampler with denoise below 1.")],
        )

    @classmethod
    def execute(cls, vae, pixels, tiled: bool = False, tile_size: int = 512) -> io.NodeOutput:
        comfy_bridge.load_to_compute_device([vae.vae])
        latents = vae_codec.encode(vae, pixels, tiled=tiled, tile_size=tile_size)
        return io.NodeOutput({"samples": latents})


NODES = [DSVAEDecode, DSVAEEncode]
