"""The node graph (load, encode, sample, decode) against diffusers' pipelines.

The nodes' own `execute` run as ComfyUI would call them, on tiny models saved
to disk and loaded back through DSLoadModel; the reference is the diffusers
pipeline built from the very same components, same seed and scheduler.
Float32, max abs difference at most 1e-4 on the decoded images.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pil_inputs
import tiny_models

TOL = 1e-4


def _nodes():
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode, DSVAEEncode

    return DSLoadModel, DSTextEncode, DSSampler, DSVAEDecode, DSVAEEncode


def _run_graph(model_name, prompt, negative, *, seed, steps, cfg, sampler, schedule, latent, denoise=1.0):
    load, encode, sampler_node, decode, _ = _nodes()
    model, text_encoder, vae = load.execute(model_name, "float32").args
    positive = encode.execute(text_encoder, prompt, 1).args[0]
    negative_c = encode.execute(text_encoder, negative, 1).args[0]
    out = sampler_node.execute(
        model, positive, negative_c, latent, seed, steps, cfg, sampler, schedule, denoise
    ).args[0]
    images = decode.execute(vae, out).args[0]
    return images, (model, text_encoder, vae)


def _reference(pipe_cls, bundles, sampler, schedule, **kwargs):
    from diffusers_studio.nodes.engine.schedulers import make_scheduler

    model, text_encoder, vae = bundles
    parts = dict(unet=model.unet, vae=vae.vae, scheduler=make_scheduler(model.scheduler_config, sampler, schedule))
    if model.family == "sdxl":
        parts.update(
            text_encoder=text_encoder.text_encoders[0],
            text_encoder_2=text_encoder.text_encoders[1],
            tokenizer=text_encoder.tokenizers[0],
            tokenizer_2=text_encoder.tokenizers[1],
        )
        pipe = pipe_cls(**parts)
    else:
        parts.update(text_encoder=text_encoder.text_encoders[0], tokenizer=text_encoder.tokenizers[0])
        pipe = pipe_cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(output_type="np", **kwargs).images


@pytest.mark.parametrize(
    "model_name",
    ["tiny-sd15.safetensors", "tiny-sd15", "tiny-sdxl.safetensors"],
)
@pytest.mark.parametrize(
    "sampler,schedule",
    [("Euler", "normal"), ("Euler a", "normal"), ("DPM++ 2M", "karras"), ("DDIM", "normal")],
)
def test_txt2img_matches_diffusers(models_dir, model_name, sampler, schedule):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    images, bundles = _run_graph(
        model_name, "a photo of a cat", "blurry", seed=42, steps=5, cfg=7.0,
        sampler=sampler, schedule=schedule, latent=latent,
    )
    pipe_cls = StableDiffusionXLPipeline if bundles[0].family == "sdxl" else StableDiffusionPipeline
    expected = _reference(
        pipe_cls, bundles, sampler, schedule,
        prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=5,
        guidance_scale=7.0, height=64, width=64, generator=torch.Generator().manual_seed(42),
    )
    assert images.shape == (1, 64, 64, 3)
    diff = np.abs(images.numpy() - expected).max()
    assert diff <= TOL, f"max abs difference {diff}"


def _img2img_pipeline(family):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline if family == "sdxl" else StableDiffusionImg2ImgPipeline


@pytest.mark.parametrize(
    "model_name,sampler",
    [("tiny-sd15.safetensors", "Euler"), ("tiny-sd15.safetensors", "Euler a"), ("tiny-sd15.safetensors", "DDIM"),
     ("tiny-sdxl.safetensors", "Euler a")],
)
def test_img2img_matches_the_pipeline_fed_a_pil_image(models_dir, model_name, sampler):
    """The user's picture through Diffusers VAE Encode (latent_sampling "sample", the default)
    equals the img2img pipeline called with the same PIL image and seed."""
    *_, encode_node = _nodes()
    _, _, vae = _nodes()[0].execute(model_name, "float32").args
    photo = pil_inputs.picture(3)
    latent = encode_node.execute(vae, pil_inputs.as_image(photo)).args[0]
    images, bundles = _run_graph(
        model_name, "a castle", "", seed=7, steps=10, cfg=5.0,
        sampler=sampler, schedule="normal", latent=latent, denoise=0.6,
    )
    expected = _reference(
        _img2img_pipeline(bundles[0].family), bundles, sampler, "normal",
        prompt="a castle", negative_prompt="", image=photo, strength=0.6, num_inference_steps=10,
        guidance_scale=5.0, generator=torch.Generator().manual_seed(7),
    )
    diff = np.abs(images.numpy() - expected).max()
    assert diff <= TOL, f"max abs difference {diff}"


def test_img2img_mode_matches_the_pipeline_fed_the_mode_latents(models_dir):
    """latent_sampling "mode" (ComfyUI's deterministic encoding) equals the pipeline handed
    the posterior's mean as latents; the PIL image's sampled picture is another one."""
    from diffusers import StableDiffusionImg2ImgPipeline

    *_, encode_node = _nodes()
    _, _, vae = _nodes()[0].execute("tiny-sd15.safetensors", "float32").args
    photo = pil_inputs.picture(3)
    latent = encode_node.execute(vae, pil_inputs.as_image(photo), False, 512, "mode").args[0]
    assert set(latent) == {"samples"}
    images, bundles = _run_graph(
        "tiny-sd15.safetensors", "a castle", "", seed=7, steps=10, cfg=5.0,
        sampler="Euler a", schedule="normal", latent=latent, denoise=0.6,
    )
    common = dict(prompt="a castle", negative_prompt="", strength=0.6, num_inference_steps=10, guidance_scale=5.0)
    scaled = latent["samples"] * vae.scaling_factor  # diffusers takes 4-channel input as latents
    expected = _reference(StableDiffusionImg2ImgPipeline, bundles, "Euler a", "normal", image=scaled,
                          generator=torch.Generator().manual_seed(7), **common)
    assert np.abs(images.numpy() - expected).max() <= TOL
    sampled = _reference(StableDiffusionImg2ImgPipeline, bundles, "Euler a", "normal", image=photo,
                         generator=torch.Generator().manual_seed(7), **common)
    assert np.abs(images.numpy() - sampled).max() > 1e-3


def test_batch_gives_different_images_with_consecutive_seeds(models_dir):
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    images, _ = _run_graph(
        "tiny-sd15.safetensors", "a cat", "", seed=10, steps=3, cfg=7.0,
        sampler="Euler", schedule="normal", latent=latent,
    )
    single, _ = _run_graph(
        "tiny-sd15.safetensors", "a cat", "", seed=11, steps=3, cfg=7.0,
        sampler="Euler", schedule="normal", latent={"samples": torch.zeros(1, 4, 8, 8)},
    )
    assert not torch.allclose(images[0], images[1])
    assert torch.allclose(images[1], single[0], atol=1e-5)
