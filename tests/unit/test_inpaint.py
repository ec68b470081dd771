"""Inpainting against diffusers' inpaint pipelines, plus its promises.

Parity of the deterministic path (latent_sampling "mode", ComfyUI's way):
`inpaint.prepare` + `sample` reproduce StableDiffusionInpaintPipeline (4- and
9-channel tiny UNets) and StableDiffusionXLInpaintPipeline fed the pack's mode
latents (`image` as 4-channel scaled latents, `masked_image_latents`), to 1e-4
in float32; then the generator's first draw is the starting noise in both.
The default "sample" path against the pipelines fed PIL images is in
test_posterior_parity.py. The mask is handed over in pixels and diffusers
binarises and resizes it itself; the tests' masks are aligned to the 8-pixel
latent grid, where the pack's area-averaged latent mask (kept soft on
purpose) equals diffusers' nearest-resized binary one.
"""
from __future__ import annotations

import logging

import pytest
import torch
from pipeline_env import sd1_inpaint_env, sdxl_inpaint_env

from diffusers_studio.nodes.engine import inpaint, masks, vae_codec
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.schedulers import make_scheduler

TOL = 1e-4
SEED = 77
STEPS = 3
CFG = 6.0
SIZE = 64


def _image(seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    base = torch.stack([x, y, (x + y) / 2], -1)
    return (base[None] * 0.7 + 0.3 * torch.rand(batch, SIZE, SIZE, 3, generator=g)).clamp(0, 1)


def _mask(batch=1):
    m = torch.zeros(batch, SIZE, SIZE)
    m[:, 16:48, 24:56] = 1.0  # aligned to the 8-pixel latent grid
    return m


@pytest.fixture(scope="module")
def sd1():
    return sd1_inpaint_env(4)


@pytest.fixture(scope="module")
def sd1_inpainting():
    return sd1_inpaint_env(9)


@pytest.fixture(scope="module")
def sdxl():
    return sdxl_inpaint_env()


def _diff(env, ours, ref) -> float:
    """Max abs difference in the UNet's (scaled) latent space, as test_sampling compares."""
    return float(((ours - ref) * env["model"].latent_scaling_factor).abs().max())


def _ours(env, prepared, *, denoise, sampler="DDIM", schedule="normal", seed=SEED):
    return sample(env["model"], env["pos"], env["neg"], prepared.latent, seed=seed, steps=STEPS, cfg=CFG,
                  sampler_name=sampler, schedule=schedule, denoise=denoise)["samples"]


def _reference(env, image, mask, *, strength, sampler="DDIM", schedule="normal", batch=1):
    pipe, model, vae = env["pipe"], env["model"], env["vae"]
    pipe.scheduler = make_scheduler(model.scheduler_config, sampler, schedule)
    scale = model.latent_scaling_factor
    latents = vae_codec.encode(vae, image) * scale
    masked = vae_codec.encode(vae, torch.where(mask[..., None] >= 0.5, torch.full_like(image, 0.5), image)) * scale
    kwargs = {k: v.repeat(batch, *([1] * (v.ndim - 1))) for k, v in env["kwargs"].items()}
    out = pipe(
        **kwargs, image=latents, mask_image=mask[:, None], masked_image_latents=masked,
        height=SIZE, width=SIZE, strength=strength, num_inference_steps=STEPS, guidance_scale=CFG,
        generator=[torch.Generator().manual_seed(SEED + i) for i in range(batch)], output_type="latent",
    ).images
    return out / scale


@pytest.mark.parametrize("strength,sampler,schedule", [(0.75, "Euler", "normal"), (1.0, "DDIM", "normal"),
                                                       (1.0, "DPM++ 2M", "karras")])
def test_sd1_ordinary_model_matches_diffusers(sd1, strength, sampler, schedule):
    image, mask = _image(), _mask()
    prepared = inpaint.prepare(sd1["vae"], sd1["model"], image, mask, latent_sampling="mode")
    assert prepared.kind == "ordinary"
    ours = _ours(sd1, prepared, denoise=strength, sampler=sampler, schedule=schedule)
    ref = _reference(sd1, image, mask, strength=strength, sampler=sampler, schedule=schedule)
    assert _diff(sd1, ours, ref) <= TOL


@pytest.mark.parametrize("strength", [0.75, 1.0])
def test_sd1_inpainting_model_matches_diffusers(sd1_inpainting, strength):
    env = sd1_inpainting
    image, mask = _image(), _mask()
    prepared = inpaint.prepare(env["vae"], env["model"], image, mask, blend_unmasked=False,
                               latent_sampling="mode")
    assert prepared.kind == "inpainting" and "noise_mask" not in prepared.latent
    ours = _ours(env, prepared, denoise=strength)
    ref = _reference(env, image, mask, strength=strength)
    assert _diff(env, ours, ref) <= TOL


def test_inpainting_model_batch_of_two_matches_diffusers(sd1_inpainting):
    env = sd1_inpainting
    image, mask = _image(batch=2), _mask(1)
    prepared = inpaint.prepare(env["vae"], env["model"], image, mask, blend_unmasked=False,
                               latent_sampling="mode")
    ours = _ours(env, prepared, denoise=0.75)
    # Sample i uses seed + i, as diffusers' generator list; one mask for both.
    ref = _reference(env, image, mask, strength=0.75, batch=2)
    assert _diff(env, ours, ref) <= TOL


@pytest.mark.parametrize("strength", [0.75, 1.0])
def test_sdxl_ordinary_model_matches_diffusers(sdxl, strength):
    image, mask = _image(), _mask()
    prepared = inpaint.prepare(sdxl["vae"], sdxl["model"], image, mask, latent_sampling="mode")
    ours = _ours(sdxl, prepared, denoise=strength)
    ref = _reference(sdxl, image, mask, strength=strength)
    assert _diff(sdxl, ours, ref) <= TOL


# ---------------------------------------------------------------- promises


def test_strength_zero_leaves_the_latent_unchanged(sd1):
    image = _image()
    prepared = inpaint.prepare(sd1["vae"], sd1["model"], image, _mask())
    out = _ours(sd1, prepared, denoise=0.0)
    assert torch.equal(out, vae_codec.encode(sd1["vae"], image))


def test_strength_one_ignores_the_original_inside_the_mask(sd1):
    """Two originals that differ only inside the (latent) mask give the same result (the mode:
    a changed latent is not the encoder's mean any more, so it would not be posterior-sampled)."""
    image, mask = _image(), _mask()
    prepared = inpaint.prepare(sd1["vae"], sd1["model"], image, mask, latent_sampling="mode")
    lat = prepared.latent
    inside = masks.to_latent_size(mask, 8) > 0.5
    other = torch.where(inside, torch.randn_like(lat["samples"]) * 3, lat["samples"])
    changed = dict(lat, samples=other)
    run = dict(seed=SEED, steps=STEPS, cfg=CFG, sampler_name="DDIM", denoise=1.0)
    a = sample(sd1["model"], sd1["pos"], sd1["neg"], lat, **run)["samples"]
    b = sample(sd1["model"], sd1["pos"], sd1["neg"], changed, **run)["samples"]
    assert _diff(sd1, a, b) <= TOL
    # Without the mask (plain image-to-image, no pure-noise start) the original leaks in.
    c = sample(sd1["model"], sd1["pos"], sd1["neg"], {"samples": other}, **run)["samples"]
    assert _diff(sd1, a, c) > 100 * TOL


def test_inpainting_model_never_sees_the_original_inside_the_mask(sd1_inpainting):
    env = sd1_inpainting
    image, mask = _image(), _mask()
    other = torch.where(mask[..., None] > 0, 1 - image, image)
    outs = [_ours(env, inpaint.prepare(env["vae"], env["model"], im, mask, blend_unmasked=False), denoise=1.0)
            for im in (image, other)]
    assert _diff(env, outs[0], outs[1]) <= TOL


def test_all_zero_mask_changes_nothing(sd1, sd1_inpainting, caplog):
    image = _image()
    for env in (sd1, sd1_inpainting):
        with caplog.at_level(logging.INFO):
            prepared = inpaint.prepare(env["vae"], env["model"], image, torch.zeros(1, SIZE, SIZE),
                                       blend_unmasked=False, latent_sampling="mode")
        assert "mask is empty" in caplog.text
        out = _ours(env, prepared, denoise=1.0)
        # Exactly the input in the UNet's space; /scale*scale rounds in the last bit.
        assert torch.allclose(out, prepared.latent["samples"], rtol=1e-6, atol=1e-6)
        decoded = vae_codec.decode(env["vae"], out)
        assert torch.equal(inpaint.composite(image, decoded, prepared.mask), image)


def test_all_one_mask_is_plain_img2img(sd1):
    # The mode: sampled, the inpaint pipeline also draws the masked image's posterior (img2img does not).
    image = _image()
    prepared = inpaint.prepare(sd1["vae"], sd1["model"], image, torch.ones(1, SIZE, SIZE), latent_sampling="mode")
    ours = _ours(sd1, prepared, denoise=0.6, sampler="Euler a")
    plain = sample(sd1["model"], sd1["pos"], sd1["neg"], {"samples": vae_codec.encode(sd1["vae"], image)},
                   seed=SEED, steps=STEPS, cfg=CFG, sampler_name="Euler a", denoise=0.6)["samples"]
    assert torch.equal(ours, plain)


def test_mask_of_another_size_is_resized_with_a_log_line(sd1, caplog):
    small = torch.zeros(1, 16, 16)
    small[:, 4:12, 6:14] = 1.0
    with caplog.at_level(logging.WARNING):
        prepared = inpaint.prepare(sd1["vae"], sd1["model"], _image(), small)
    assert "resizing the mask" in caplog.text and "16x16" in caplog.text
    assert prepared.mask.shape == (1, SIZE, SIZE)
    assert prepared.mask[0, 32, 40] == 1 and prepared.mask[0, 0, 0] == 0 and prepared.mask[0, 63, 63] == 0


def test_mask_batch_mismatch_is_a_clear_error(sd1):
    with pytest.raises(ValueError, match=r"batch of 2 masks .* batch has 3 images"):
        inpaint.prepare(sd1["vae"], sd1["model"], _image(batch=3), _mask(2))


def test_bad_inputs_name_the_input(sd1):
    with pytest.raises(ValueError, match="fill must be one of"):
        inpaint.prepare(sd1["vae"], sd1["model"], _image(), _mask(), fill="smear")
    with pytest.raises(ValueError, match="image is 60x64"):
        inpaint.prepare(sd1["vae"], sd1["model"], _image()[:, :, :60], _mask())
    with pytest.raises(ValueError, match="blur must be"):
        inpaint.prepare(sd1["vae"], sd1["model"], _image(), _mask(), blur=-1)


def test_inpainting_model_without_the_hook_says_what_to_do(sd1_inpainting):
    env = sd1_inpainting
    with pytest.raises(ValueError, match="Diffusers Inpaint"):
        sample(env["model"], env["pos"], env["neg"], {"samples": torch.zeros(1, 4, 8, 8)}, seed=1, steps=2,
               cfg=CFG, sampler_name="DDIM")


def test_latent_for_an_inpainting_model_refused_by_an_ordinary_one(sd1, sd1_inpainting):
    prepared = inpaint.prepare(sd1_inpainting["vae"], sd1_inpainting["model"], _image(), _mask())
    with pytest.raises(ValueError, match="inpainting model"):
        _ours(sd1, prepared, denoise=1.0)


@pytest.mark.parametrize("fill", ["blurred", "noise", "nothing"])
def test_fills_change_only_the_masked_area(sd1, fill):
    image, mask = _image(), _mask()
    base = inpaint.prepare(sd1["vae"], sd1["model"], image, mask).latent["samples"]
    filled = inpaint.prepare(sd1["vae"], sd1["model"], image, mask, fill=fill, seed=3).latent["samples"]
    inside = (masks.to_latent_size(mask, 8) > 0).expand_as(base)
    assert (filled - base)[inside].abs().max() > 1e-2
    if fill != "blurred":  # "blurred" re-encodes the picture: the VAE sees across the edge
        assert torch.equal(filled[~inside], base[~inside])


def test_blurred_fill_takes_colours_from_around_the_mask():
    image = torch.zeros(1, SIZE, SIZE, 3)
    image[..., 0] = 1.0  # all red outside
    out = inpaint.fill_blurred(image.clone(), _mask())
    assert torch.allclose(out, image, atol=1e-4)
    image[:, 16:48, 24:56] = torch.tensor([0.0, 0.0, 1.0])  # blue inside is forgotten
    out = inpaint.fill_blurred(image, _mask())
    assert out[0, 32, 40, 0] > 0.99 and out[0, 32, 40, 2] < 0.01


def test_soft_masks_blend_gradually(sd1):
    image = _image()
    soft = torch.zeros(1, SIZE, SIZE)
    soft[:, :, 32:] = 0.5
    prepared = inpaint.prepare(sd1["vae"], sd1["model"], image, soft)
    assert torch.allclose(prepared.latent["noise_mask"][..., 4:], torch.full((1, 1, 8, 4), 0.5))
    init = prepared.latent["samples"]
    soft_out = _ours(sd1, prepared, denoise=0.8)
    hard = torch.zeros_like(soft)
    hard[:, :, 32:] = 1.0
    hard_out = _ours(sd1, inpaint.prepare(sd1["vae"], sd1["model"], image, hard), denoise=0.8)
    d_soft = (soft_out - init)[..., 4:].abs().mean()
    d_hard = (hard_out - init)[..., 4:].abs().mean()
    assert 0 < d_soft < d_hard


# ---------------------------------------------------------------- masks and compositing


def test_grow_and_blur():
    m = torch.zeros(1, 32, 32)
    m[:, 10:20, 10:20] = 1
    grown = masks.grow(m, 2)
    assert grown[0, 8, 15] == 1 and grown[0, 7, 15] == 0 and grown.sum() > m.sum()
    assert torch.equal(masks.grow(grown, -2), m)
    feathered = masks.blur(m, 2.0)
    assert 0 < feathered[0, 10, 15] < 1 and feathered[0, 15, 15] > 0.95 and feathered[0, 0, 0] == 0


def test_composite_keeps_the_outside_bit_identical():
    original, generated = torch.rand(2, 40, 48, 3), torch.rand(2, 40, 48, 3)
    mask = masks.blur(torch.nn.functional.pad(torch.ones(1, 10, 10), (19, 19, 15, 15)), 3.0)
    out = inpaint.composite(original, generated, mask)
    outside = (mask == 0)[..., None].expand(2, -1, -1, 3)
    assert torch.equal(out[outside], original[outside])
    m = mask[0, 20, 24]
    assert 0 < m < 1 and torch.allclose(out[:, 20, 24], original[:, 20, 24] * (1 - m) + generated[:, 20, 24] * m)
    with pytest.raises(ValueError, match="generated has 3 images but original has 2"):
        inpaint.composite(original, torch.rand(3, 40, 48, 3), mask)


def test_crop_to_mask_and_paste_back():
    image = torch.rand(1, 96, 128, 3)
    mask = torch.zeros(1, 96, 128)
    mask[:, 40:56, 90:110] = 1
    crops, crop_mask, plan = inpaint.crop_to_mask(image, mask, padding=8, width=64, height=64)
    assert crops.shape == (1, 64, 64, 3) and crop_mask.shape == (1, 64, 64)
    x0, y0, x1, y1 = plan.boxes[0]
    assert x1 - x0 == y1 - y0 and x0 <= 82 and x1 >= 118 and x1 <= 128  # square, inside the image
    assert crop_mask.max() == 1 and crop_mask[0, 0, 0] == 0
    out = inpaint.paste_back(plan, torch.rand(1, 64, 64, 3), crop_mask)
    outside = (mask == 0)[..., None].expand_as(image)
    # Outside the mask's bilinear footprint the original comes back exactly.
    far = outside.clone()
    far[:, 38:58, 88:112] = False
    assert torch.equal(out[far], image[far])
    assert not torch.equal(out[:, 48, 100], image[:, 48, 100])


def test_crop_native_size_and_rounding(sd1):
    assert inpaint.native_size(sd1["model"]) == 32 * 8  # the tiny UNet's sample_size
    assert inpaint.round_to(511, 8) == 512 and inpaint.round_to(3, 8) == 8
