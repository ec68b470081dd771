"""DSFluxControlImage: the control image of FLUX.1 Canny dev / Depth dev (engine/flux_control.py).

The graph: Load Diffusers Model (a Canny or Depth dev transformer) -> an empty
latent (or an encoded picture, or Diffusers Inpaint's latent) -> this node
with the canny / depth map -> Diffusers Sampler. ComfyUI's own graph for these
models uses InstructPixToPixConditioning; here the control image rides on the
latent, so every latent source works and the prompts stay as they are.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from . import comfy_bridge
from .engine import vae_codec
from .engine.components import FLUX
from .engine.controlnet_dit import hint_pixels
from .engine.flux_control import MADE_BY, FluxControlInputs
from .types import DSVAE, category


def control_latent(latent: dict, vae, image: torch.Tensor) -> dict:
    """A copy of `latent` carrying the control image, encoded at the latent's pixel size."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise ValueError(f"latent: expected a LATENT (a dict with samples), got {type(latent).__name__}")
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image: expected an IMAGE [batch, height, width, channels], got {shape}")
    samples = latent["samples"]
    if vae.family != FLUX:
        raise ValueError(
            f"vae: {vae.name!r} is a {vae.family} VAE; FLUX.1 Canny/Depth dev encode their control image with "
            "the Flux VAE (ae.safetensors): connect the VAE output of the Canny/Depth dev model's loader"
        )
    if int(samples.shape[1]) != int(vae.latent_channels):
        raise ValueError(
            f"latent: it has {int(samples.shape[1])} channels, the Flux VAE makes {int(vae.latent_channels)}: "
            "use an empty latent made for Flux (Diffusers Empty Latent or EmptySD3LatentImage)"
        )
    batch, n = int(samples.shape[0]), int(image.shape[0])
    if n != 1 and n != batch:
        raise ValueError(
            f"image: {n} control images for a latent batch of {batch}: give one control image, or one per picture"
        )
    pixel_size = (int(samples.shape[-2]) * vae.downscale, int(samples.shape[-1]) * vae.downscale)
    comfy_bridge.load_to_compute_device([vae.vae])
    mean, std = vae_codec.encode(vae, hint_pixels(image, pixel_size), with_std=True)
    out = dict(latent)
    out["ds_hooks"] = [*(latent.get("ds_hooks") or ()), FluxControlInputs(mean, std)]
    return out


class DSFluxControlImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DSFluxControlImage",
            display_name=MADE_BY,
            category=category("controlnet"),
            description=(
                "Gives FLUX.1 Canny dev or Depth dev its control image (FluxControlPipeline's control_image): "
                "the image is encoded with the Flux VAE and sampled with the run's seed, as the pipeline does, "
                "and the sampler feeds it to the transformer next to the latents on every step. Make the "
                "canny edges or the depth map first (any preprocessor node); this node does not detect them."
            ),
            inputs=[
                io.Latent.Input(
                    "latent",
                    tooltip="What the sampler starts from: an empty Flux latent (text-to-image), an encoded "
                    "picture (image-to-image) or Diffusers Inpaint's latent. Its size sets the control image's.",
                ),
                DSVAE.Input("vae", tooltip="The Flux VAE (the VAE output of the Canny/Depth dev model's loader)."),
                io.Image.Input(
                    "control_image",
                    tooltip="The canny edge map (Canny dev) or depth map (Depth dev), white edges / near is "
                    "bright as the models were trained. Resized to the latent's pixel size; one image for the "
                    "whole batch or one per picture.",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    display_name="LATENT",
                    tooltip="The same latent carrying the control image, for Diffusers Sampler with a FLUX.1 "
                    "Canny/Depth dev model (other models refuse it, naming this node).",
                ),
            ],
        )

    @classmethod
    def execute(cls, latent, vae, control_image) -> io.NodeOutput:
        return io.NodeOutput(control_latent(latent, vae, control_image))


NODES = [DSFluxControlImage]
