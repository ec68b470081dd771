"""SD3 and Flux.1 through the node graph against diffusers' pipelines.

DSLoadModel (a diffusers folder in models/diffusers) -> DSTextEncode ->
DSSampler -> DSVAEDecode, and DSVAEEncode for image-to-image, run as ComfyUI
calls them; the reference is the diffusers pipeline built from the very same
loaded components, called with prompt strings (and a PIL image), same seed.
Float32, max abs difference at most 1e-4 on the decoded images.

Image-to-image: diffusers' img2img pipelines sample the VAE posterior with
the generator before the noise draw; DSVAEEncode's default latent_sampling
"sample" hands the posterior to the sampler, which draws it with its seed in
the same order, so the pipeline is called exactly as its docs show (PIL image).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ldm_export
import tiny_dit

TOL = 1e-4
SIZE = 64  # pixels: an 8x8 latent, 4x4 packed Flux tokens


@pytest.fixture(scope="module")
def dit_models(models_dir):
    import folder_paths

    folder = models_dir / "diffusers"
    ldm_export.save_diffusers_folder(tiny_dit.sd3_pipeline(0), folder / "tiny-sd3")
    ldm_export.save_diffusers_folder(tiny_dit.sd3_pipeline(0, with_t5=False), folder / "tiny-sd3-no-t5")
    ldm_export.save_diffusers_folder(tiny_dit.flux_pipeline(0, dev=True), folder / "tiny-flux-dev")
    ldm_export.save_diffusers_folder(tiny_dit.flux_pipeline(0, dev=False), folder / "tiny-flux-schnell")
    folder_paths.filename_list_cache.clear()
    return folder


def _nodes():
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.flux_guidance import DSFluxGuidance
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode, DSVAEEncode

    return DSLoadModel, DSTextEncode, DSSampler, DSVAEDecode, DSVAEEncode, DSFluxGuidance


def _load(name):
    return _nodes()[0].execute(name, "float32").args


def _graph(name, prompt, negative, *, seed, steps, cfg, latent, denoise=1.0, guidance=None, max_len=0):
    load, encode, sampler, decode, _, flux_guidance = _nodes()
    model, text_encoder, vae = _load(name)
    positive = encode.execute(text_encoder, prompt, 1, 0, False, max_len).args[0]
    negative_c = encode.execute(text_encoder, negative, 1, 0, False, max_len).args[0]
    if guidance is not None:
        positive = flux_guidance.execute(positive, guidance).args[0]
    out = sampler.execute(model, positive, negative_c, latent, seed, steps, cfg, "Euler", "normal", denoise).args[0]
    return decode.execute(vae, out).args[0], (model, text_encoder, vae)


def _pipeline(pipe_cls, bundles):
    return tiny_dit.pipeline_of(pipe_cls, bundles)


def _picture():
    """A random picture on the 8-bit grid, so that the PIL copy the pipeline gets is the same picture."""
    torch.manual_seed(3)
    return (torch.rand(1, SIZE, SIZE, 3) * 255).round() / 255


def _pil(image):
    from PIL import Image

    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


def _assert_close(images, expected):
    assert images.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(images.numpy() - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"


def _empty():
    return {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-sd3-no-t5"])
def test_sd3_txt2img_matches_diffusers(dit_models, name):
    from diffusers import StableDiffusion3Pipeline

    images, bundles = _graph(name, "a photo of a cat", "blurry", seed=42, steps=4, cfg=5.0, latent=_empty())
    expected = _pipeline(StableDiffusion3Pipeline, bundles)(
        prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=4, guidance_scale=5.0,
        height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(42), output_type="np",
    ).images
    _assert_close(images, expected)


def test_flux_dev_txt2img_matches_diffusers(dit_models):
    from diffusers import FluxPipeline

    images, bundles = _graph(
        "tiny-flux-dev", "a photo of a cat", "", seed=7, steps=4, cfg=1.0, latent=_empty(), guidance=4.0,
    )
    expected = _pipeline(FluxPipeline, bundles)(
        prompt="a photo of a cat", num_inference_steps=4, guidance_scale=4.0, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(7), output_type="np",
    ).images
    _assert_close(images, expected)


def test_flux_dev_true_cfg_matches_diffusers(dit_models):
    """cfg > 1 runs the negative prompt too (FluxPipeline's true_cfg_scale), guidance defaulting to 3.5."""
    from diffusers import FluxPipeline

    images, bundles = _graph("tiny-flux-dev", "a castle", "fog", seed=3, steps=3, cfg=2.5, latent=_empty())
    expected = _pipeline(FluxPipeline, bundles)(
        prompt="a castle", negative_prompt="fog", true_cfg_scale=2.5, num_inference_steps=3, guidance_scale=3.5,
        height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3), output_type="np",
    ).images
    _assert_close(images, expected)


def test_flux_schnell_txt2img_matches_diffusers(dit_models):
    from diffusers import FluxPipeline

    images, bundles = _graph("tiny-flux-schnell", "a red apple", "", seed=11, steps=4, cfg=1.0, latent=_empty())
    assert bundles[0].variant == "schnell"
    expected = _pipeline(FluxPipeline, bundles)(
        prompt="a red apple", num_inference_steps=4, guidance_scale=0.0, max_sequence_length=256,
        height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(11), output_type="np",
    ).images
    _assert_close(images, expected)


@pytest.mark.parametrize(
    "name,denoise",
    [("tiny-sd3", 0.6), ("tiny-flux-dev", 0.6), ("tiny-flux-dev", 0.5)],
)
def test_img2img_matches_diffusers(dit_models, name, denoise):
    """denoise 0.6 of 4 steps keeps 2.4: diffusers' flow pipelines run int(4 - 2.4) = 1 -> 3 steps."""
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    *_, encode_node, _ = _nodes()
    _, _, vae = _load(name)
    picture = _picture()
    latent = encode_node.execute(vae, picture).args[0]
    cfg = 1.0 if name.startswith("tiny-flux") else 4.0
    images, bundles = _graph(name, "a castle", "", seed=5, steps=4, cfg=cfg, latent=latent, denoise=denoise)

    pipe_cls = FluxImg2ImgPipeline if bundles[0].family == "flux" else StableDiffusion3Img2ImgPipeline
    kwargs = {"guidance_scale": 3.5} if bundles[0].family == "flux" else {"guidance_scale": cfg, "negative_prompt": ""}
    expected = _pipeline(pipe_cls, bundles)(
        prompt="a castle", image=_pil(picture), strength=denoise, num_inference_steps=4, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(5), output_type="np", **kwargs,
    ).images
    _assert_close(images, expected)
