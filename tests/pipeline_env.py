"""A diffusers pipeline and the engine's view of the same components, for parity tests.

The engine takes a ModelBundle, a VAEBundle and Conditionings; the pipeline
takes prompt embeddings. `pipeline_env` makes both from one pipeline so an
engine run and a pipeline call see the same weights and the same prompts.
"""
from __future__ import annotations

import torch

from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle, VAEBundle


def model_bundle(pipe, family: str) -> ModelBundle:
    return ModelBundle(family, "tiny", pipe.unet, dict(pipe.scheduler.config), torch.float32,
                       latent_scaling_factor=pipe.vae.config.scaling_factor, vae_scale_factor=8)


def pipeline_env(pipe, family: str, prompt: str = "a red door", negative: str = "blurry") -> dict:
    """{"pipe", "model", "vae", "kwargs" (the pipeline's prompt embeddings), "pos", "neg"}."""
    pipe.set_progress_bar_config(disable=True)
    if family == "sdxl":
        pe, ne, pp, npool = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=True,
                                               negative_prompt=negative)
        empty = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)[0]
        kwargs = dict(prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
                      negative_pooled_prompt_embeds=npool)
        pos, neg = Conditioning("sdxl", pe, empty, pooled=pp), Conditioning("sdxl", ne, empty, pooled=npool)
    else:
        pe, ne = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
        empty = pipe.encode_prompt("", "cpu", 1, False)[0]
        kwargs = dict(prompt_embeds=pe, negative_prompt_embeds=ne)
        pos, neg = Conditioning(family, pe, empty), Conditioning(family, ne, empty)
    return {"pipe": pipe, "model": model_bundle(pipe, family), "vae": VAEBundle(family, "tiny", pipe.vae),
            "kwargs": kwargs, "pos": pos, "neg": neg}


def sd1_inpaint_env(in_channels: int) -> dict:
    """StableDiffusionInpaintPipeline on the tiny SD1 components (4 or 9 UNet input channels)."""
    from diffusers import StableDiffusionInpaintPipeline
    from tiny_models import tiny_sd1_components

    pipe = StableDiffusionInpaintPipeline(**tiny_sd1_components(0, in_channels=in_channels),
                                          requires_safety_checker=False)
    return pipeline_env(pipe, "sd1")


def sdxl_inpaint_env() -> dict:
    """StableDiffusionXLInpaintPipeline on the tiny SDXL components."""
    from diffusers import StableDiffusionXLInpaintPipeline
    from tiny_models import tiny_sdxl_components

    return pipeline_env(StableDiffusionXLInpaintPipeline(**tiny_sdxl_components(0)), "sdxl")
