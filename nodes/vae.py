"""DSVAEDecode and DSVAEEncode: between ComfyUI IMAGE and LATENT with a DS_VAE.

Memory is planned with ComfyUI: room for one image's working memory is made
before the call, a batch goes through in slices that fit what ComfyUI reports
free, and an out-of-memory error is retried tiled.
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from . import comfy_bridge
from .engine import posterior, vae_codec
from .types import DSVAE, category

log = logging.getLogger(__name__)

_TILED_TIP = "Process the image in overlapping tiles to save memory on large images (slightly slower)."
_TILE_SIZE_TIP = "Tile size in pixels when tiled is on."


LATENT_SAMPLING_TIP = (
    "sample (default): the sampler draws the latent from the VAE's distribution with its seed, right "
    "before the noise, as diffusers' img2img/inpaint pipelines and A1111 do, so the same seed gives their "
    "picture. mode: the distribution's mean, deterministic (ComfyUI's VAE Encode)."
)


def latent_sampling_input():
    """The widget DSVAEEncode and DSInpaint share (optional: older API prompts lack it)."""
    return io.Combo.Input(
        "latent_sampling", options=list(posterior.SAMPLING_MODES), default=posterior.DEFAULT_SAMPLING,
        optional=True, tooltip=LATENT_SAMPLING_TIP,
    )


def latent_sampling_error(latent_sampling: str) -> str | None:
    """validate_inputs' message for an unknown latent_sampling value, or None."""
    if latent_sampling in posterior.SAMPLING_MODES:
        return None
    return f"latent_sampling: '{latent_sampling}' is not one of {list(posterior.SAMPLING_MODES)}."


def _tile_inputs() -> list:
    return [
        io.Boolean.Input("tiled", default=False, tooltip=_TILED_TIP),
        io.Int.Input("tile_size", default=512, min=128, max=4096, step=64, tooltip=_TILE_SIZE_TIP),
    ]


def _prepared(vae, batch, bytes_per_image) -> int:
    """Load the VAE with room for one image, then how many images fit one call (VAE slicing).

    The same planning as ComfyUI's own VAE nodes: ComfyUI makes room for the
    working memory of one image, and the batch goes through in slices of as
    many images as the memory it reports free can hold. `bytes_per_image`
    takes the batch's shape and the VAE's dtype. A malformed batch is left to
    vae_codec, which names what is wrong with it.
    """
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        comfy_bridge.load_to_compute_device([vae.vae])
        return vae_codec.DEFAULT_BATCH_PER_CALL
    per_image = bytes_per_image(*batch.shape, next(vae.vae.parameters()).dtype)
    comfy_bridge.load_to_compute_device([vae.vae], memory_required=per_image)
    return vae_codec.images_per_call(len(batch), per_image, comfy_bridge.free_memory_bytes())


def _untiled_or_tiled(run, tiled: bool, what: str):
    """Run untiled; on an out-of-memory error retry tiled, as ComfyUI's VAE nodes do."""
    if tiled:
        return run(True)
    try:
        return run(False)
    except torch.OutOfMemoryError:
        log.warning("Out of memory in the VAE %s; retrying tiled (tile_size as set on the node).", what)
        comfy_bridge.release_cached_memory()
        return run(True)


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
        latents = samples["samples"]
        per_call = _prepared(vae, latents, lambda b, c, h, w, dtype: vae_codec.decode_bytes_per_image(h, w, dtype))
        images = _untiled_or_tiled(
            lambda tile: vae_codec.decode(vae, latents, tiled=tile, tile_size=tile_size, batch_per_call=per_call),
            tiled, "decode",
        )
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
                latent_sampling_input(),
            ],
            outputs=[io.Latent.Output(tooltip="The encoded latent, for Diffusers Sampler with denoise below 1.")],
        )

    @classmethod
    def validate_inputs(cls, latent_sampling: str = posterior.DEFAULT_SAMPLING) -> bool | str:
        return latent_sampling_error(latent_sampling) or True

    @classmethod
    def execute(
        cls, vae, pixels, tiled: bool = False, tile_size: int = 512,
        latent_sampling: str = posterior.DEFAULT_SAMPLING,
    ) -> io.NodeOutput:
        posterior.check_mode(latent_sampling)
        per_call = _prepared(vae, pixels, lambda b, h, w, c, dtype: vae_codec.encode_bytes_per_image(h, w, dtype))
        mean, drawn_from = _untiled_or_tiled(
            lambda tile: posterior.encode(
                vae, pixels, latent_sampling, tiled=tile, tile_size=tile_size, batch_per_call=per_call
            ),
            tiled, "encode",
        )
        latent = {"samples": mean}
        if drawn_from is not None:
            latent[posterior.KEY] = drawn_from
        return io.NodeOutput(latent)


NODES = [DSVAEDecode, DSVAEEncode]
