"""The pack's own socket types.

The diffusers objects travel between DS nodes on these sockets; wherever
ComfyUI has a native type (IMAGE, MASK, LATENT) the pack uses it instead, so
native nodes (EmptyLatentImage, LoadImage, SaveImage, latent upscalers, ...)
plug straight in.
"""
from comfy_api.latest import io

DSModel = io.Custom("DS_MODEL")
DSTextEncoder = io.Custom("DS_TEXT_ENCODER")
DSVAE = io.Custom("DS_VAE")
DSConditioning = io.Custom("DS_CONDITIONING")
DSControlNet = io.Custom("DS_CONTROLNET")
DSIPAdapter = io.Custom("DS_IP_ADAPTER")
DSImageEmbeds = io.Custom("DS_IMAGE_EMBEDS")

CATEGORY = "Diffusers Studio"


def category(concept: str) -> str:
    """Node category in the Add Node menu: `Diffusers Studio/<concept>`."""
    return f"{CATEGORY}/{concept}"
