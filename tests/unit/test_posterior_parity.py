"""Parity from a user's own pictures: the pipelines called with PIL images.

diffusers' img2img and inpaint pipelines sample the VAE posterior with the
seeded generator before (image) and after (inpaint's masked image) drawing the
starting noise. With latent_sampling "sample" the engine draws the same
numbers in the same order (posterior.py), so the pipeline fed the PIL image
(and mask) as its docs show gives the engine's latents to 1e-4 in float32.
Ancestral samplers are used where the order of the draws shows: their step
noise continues from the same generators.
"""
from __future__ import annotations

import pytest
import torch
from pil_inputs import as_image, as_mask
from pil_inputs import mask_picture as _mask_picture
from pil_inputs import picture as _picture
from pipeline_env import pipeline_env, sd1_inpaint_env, sdxl_inpaint_env

from diffusers_studio.nodes.engine import inpaint, posterior, vae_codec
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.schedulers import make_scheduler

TOL = 1e-4
SEED = 31
STEPS = 4
CFG = 6.0
SIZE = 64


@pytest.fixture(scope="module")
def sd1_img2img():
    from diffusers import StableDiffusionImg2ImgPipeline
    from tiny_models import tiny_sd1_components

    return pipeline_env(StableDiffusionImg2ImgPipeline(**tiny_sd1_components(0), requires_safety_checker=False), "sd1")


@pytest.fixture(scope="module")
def sd1_inpaint():
    return sd1_inpaint_env(4)


@pytest.fixture(scope="module")
def sd1_inpainting():
    return sd1_inpaint_env(9)


@pytest.fixture(scope="module")
def sdxl_inpaint():
    return sdxl_inpaint_env()


def _generators(batch):
    return [torch.Generator().manual_seed(SEED + i) for i in range(batch)]


def _diff(env, ours, ref) -> float:
    return float(((ours - ref) * env["model"].latent_scaling_factor).abs().max())


def _run(env, latent, *, denoise, sampler):
    return sample(env["model"], env["pos"], env["neg"], latent, seed=SEED, steps=STEPS, cfg=CFG,
                  sampler_name=sampler, schedule="normal", denoise=denoise)["samples"]


def _pipe(env, sampler, *, batch, **kwargs):
    pipe, model = env["pipe"], env["model"]
    pipe.scheduler = make_scheduler(model.scheduler_config, sampler, "normal")
    prompt = {k: v.repeat(batch, *([1] * (v.ndim - 1))) for k, v in env["kwargs"].items()}
    out = pipe(**prompt, **kwargs, num_inference_steps=STEPS, guidance_scale=CFG,
               generator=_generators(batch), output_type="latent").images
    return out / model.latent_scaling_factor


# ---------------------------------------------------------------- the posterior itself


def test_encode_gives_the_mean_and_the_distributions_std(sd1_img2img):
    vae = sd1_img2img["vae"]
    image = as_image(_picture())
    mean, drawn_from = posterior.encode(vae, image, "sample")
    with torch.no_grad():
        dist = vae.vae.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist
    assert torch.allclose(mean, dist.mean, atol=1e-6) and torch.allclose(drawn_from.std, dist.std, atol=1e-6)
    assert torch.equal(mean, vae_codec.encode(vae, image))  # "samples" stays the mode
    mode_mean, none = posterior.encode(vae, image, "mode")
    assert none is None and torch.equal(mode_mean, mean)
    with pytest.raises(ValueError, match="latent_sampling"):
        posterior.encode(vae, image, "argmax")


def test_the_draw_is_diffusers_latent_dist_sample(sd1_img2img):
    vae = sd1_img2img["vae"]
    image = as_image(_picture())
    mean, drawn_from = posterior.encode(vae, image, "sample")
    ours = posterior.image_draw({"samples": mean, posterior.KEY: drawn_from}, _generators(1))
    with torch.no_grad():
        dist = vae.vae.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist
    ref = dist.sample(torch.Generator().manual_seed(SEED))  # retrieve_latents(..., generator)
    assert float((ours - ref).abs().max()) <= 1e-6


def test_changed_samples_fall_back_to_the_samples_as_they_are(sd1_img2img):
    mean, drawn_from = posterior.encode(sd1_img2img["vae"], as_image(_picture()), "sample")
    changed = {"samples": mean * 0.5, posterior.KEY: drawn_from}  # e.g. a native latent node's work
    assert posterior.image_draw(changed, _generators(1)) is None
    resized = {"samples": mean[..., :4, :4], posterior.KEY: drawn_from}
    assert posterior.image_draw(resized, _generators(1)) is None
    repeated = {"samples": mean.repeat(2, 1, 1, 1), posterior.KEY: drawn_from}  # Repeat Latent Batch
    assert posterior.image_draw(repeated, _generators(2)).shape == (2, 4, 8, 8)


def test_the_sampled_output_carries_no_posterior(sd1_img2img):
    mean, drawn_from = posterior.encode(sd1_img2img["vae"], as_image(_picture()), "sample")
    out = sample(sd1_img2img["model"], sd1_img2img["pos"], sd1_img2img["neg"],
                 {"samples": mean, posterior.KEY: drawn_from}, seed=SEED, steps=2, cfg=CFG,
                 sampler_name="Euler", denoise=0.5)
    assert posterior.KEY not in out and posterior.MASKED_KEY not in out


# ---------------------------------------------------------------- img2img


@pytest.mark.parametrize("sampler,batch", [("Euler a", 1), ("DDIM", 1), ("Euler a", 2)])
def test_img2img_matches_the_pipeline_fed_a_pil_image(sd1_img2img, sampler, batch):
    env = sd1_img2img
    picture = _picture()
    # A1111's batch: the picture repeated before encoding, one draw per sample.
    mean, drawn_from = posterior.encode(env["vae"], as_image(*[picture] * batch), "sample")
    ours = _run(env, {"samples": mean, posterior.KEY: drawn_from}, denoise=0.6, sampler=sampler)
    ref = _pipe(env, sampler, batch=batch, image=picture, strength=0.6)
    assert _diff(env, ours, ref) <= TOL


def test_img2img_mode_differs_from_the_pipeline_and_is_deterministic(sd1_img2img):
    env = sd1_img2img
    picture = _picture()
    mean, none = posterior.encode(env["vae"], as_image(picture), "mode")
    first = _run(env, {"samples": mean}, denoise=0.6, sampler="Euler a")
    again = _run(env, {"samples": mean}, denoise=0.6, sampler="Euler a")
    ref = _pipe(env, "Euler a", batch=1, image=picture, strength=0.6)
    assert torch.equal(first, again)
    assert _diff(env, first, ref) > 1e-3  # the posterior's spread shows: not the pipeline's picture


# ---------------------------------------------------------------- inpaint


def _inpaint_pair(env, *, strength, sampler, blend_unmasked=True, latent_sampling="sample", batch=1):
    picture, mask_picture = _picture(1), _mask_picture()
    prepared = inpaint.prepare(env["vae"], env["model"], as_image(picture), as_mask(mask_picture),
                               blend_unmasked=blend_unmasked, latent_sampling=latent_sampling)
    latent = dict(prepared.latent)
    if batch > 1:  # num_images_per_prompt: the one picture's latents repeated (Repeat Latent Batch)
        latent["samples"] = latent["samples"].repeat(batch, 1, 1, 1)
        if "noise_mask" in latent:
            latent["noise_mask"] = latent["noise_mask"].repeat(batch, 1, 1, 1)
    ours = _run(env, latent, denoise=strength, sampler=sampler)
    ref = _pipe(env, sampler, batch=batch, image=picture, mask_image=mask_picture, height=SIZE, width=SIZE,
                strength=strength)
    return ours, ref


@pytest.mark.parametrize("strength,sampler", [(0.75, "Euler a"), (1.0, "Euler a"), (1.0, "DDIM")])
def test_inpaint_4_channel_matches_the_pipeline_fed_pil_image_and_mask(sd1_inpaint, strength, sampler):
    ours, ref = _inpaint_pair(sd1_inpaint, strength=strength, sampler=sampler)
    assert _diff(sd1_inpaint, ours, ref) <= TOL


@pytest.mark.parametrize("strength", [0.75, 1.0])
def test_inpaint_9_channel_matches_the_pipeline_fed_pil_image_and_mask(sd1_inpainting, strength):
    ours, ref = _inpaint_pair(sd1_inpainting, strength=strength, sampler="Euler a", blend_unmasked=False)
    assert _diff(sd1_inpainting, ours, ref) <= TOL


def test_inpaint_9_channel_batch_draws_once_per_source_picture(sd1_inpainting):
    ours, ref = _inpaint_pair(sd1_inpainting, strength=0.75, sampler="Euler a", blend_unmasked=False, batch=2)
    assert _diff(sd1_inpainting, ours, ref) <= TOL


def test_inpaint_sdxl_matches_the_pipeline_fed_pil_image_and_mask(sdxl_inpaint):
    ours, ref = _inpaint_pair(sdxl_inpaint, strength=0.75, sampler="Euler a")
    assert _diff(sdxl_inpaint, ours, ref) <= TOL


def test_inpaint_mode_is_deterministic_and_not_the_pipelines(sd1_inpaint):
    ours, ref = _inpaint_pair(sd1_inpaint, strength=0.75, sampler="Euler a", latent_sampling="mode")
    again, _ = _inpaint_pair(sd1_inpaint, strength=0.75, sampler="Euler a", latent_sampling="mode")
    assert torch.equal(ours, again)
    assert _diff(sd1_inpaint, ours, ref) > 1e-3
