"""Regional prompts (engine/regional.py) on tiny models.

What is pinned: the composition formula of the module docstring; two regions
carrying the base prompt give the plain prompt's output; a region's prompt
acts inside its mask clearly more than outside; empty masks do nothing (and
say so); regions from another family are refused; SDXL's pooled rows;
regional negatives; other hooks see the widened batch.

Exactness is checked on a float64 copy of the tiny UNet: there the result is
bit-identical. In float32 the UNet's own kernels give a row slightly different
results in a batch of 6 than in a batch of 2 (measured: 1.4e-6 per call on
outputs of ~0.25), which the sampler amplifies by CFG over the steps; the
float32 check allows that relative error and no more.
"""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from diffusers_studio.nodes.engine import hooks
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle
from diffusers_studio.nodes.engine.regional import RegionalHook, add_region, rectangle_mask
from diffusers_studio.nodes.engine.sampling import sample

SIZE = 16  # latent pixels: 128x128 images, room for two regions side by side
PIXELS = SIZE * 8
STEPS = 4
# Changing the left region's prompt must change the left half at least this many
# times more (mean abs change of the latents) than the right half. Measured with
# these settings (16x16 latents, 4 Euler steps, hard half masks): 83x SD1, 89x
# SDXL, 67x for a regional negative, 80x / 97x with a masked ControlNet and
# IP-Adapter in the same run. Outside its mask a region never enters the
# prediction; what leaks there comes only through the UNet's spatial mixing of
# the partly changed latents at later steps, so the ratio falls with more steps
# (17-50x after 8 steps). 20x keeps a margin of 3x below the weakest measurement
# and far above "no locality" (1x).
MIN_LOCALITY = 20.0


def _model(pipe, family, dtype=torch.float32):
    unet = pipe.unet if dtype == torch.float32 else copy.deepcopy(pipe.unet).to(dtype)
    return ModelBundle(family, f"tiny-{family}", unet, dict(pipe.scheduler.config), dtype,
                       latent_scaling_factor=pipe.vae.config.scaling_factor)


@pytest.fixture(scope="module")
def sd1():
    from tiny_models import sd1_pipeline

    pipe = sd1_pipeline()
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]

    def enc(text, dtype=torch.float32):
        return Conditioning("sd1", pipe.encode_prompt(text, "cpu", 1, False)[0].to(dtype), empty.to(dtype))

    return {"pipe": pipe, "model": _model(pipe, "sd1"), "enc": enc}


@pytest.fixture(scope="module")
def sdxl():
    from tiny_models import sdxl_pipeline

    pipe = sdxl_pipeline()
    empty = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)[0]

    def enc(text, dtype=torch.float32):
        embeds, _, pooled, _ = pipe.encode_prompt(text, device="cpu", do_classifier_free_guidance=False)
        return Conditioning("sdxl", embeds.to(dtype), empty.to(dtype), pooled=pooled.to(dtype))

    return {"pipe": pipe, "model": _model(pipe, "sdxl"), "enc": enc}


def _halves():
    left = rectangle_mask(PIXELS, PIXELS, 0, 0, PIXELS / 2, PIXELS)
    right = rectangle_mask(PIXELS, PIXELS, PIXELS / 2, 0, PIXELS / 2, PIXELS)
    return left, right


def _run(model, pos, neg, batch=1, cfg=7.0, steps=STEPS, size=SIZE):
    latent = {"samples": torch.zeros(batch, 4, size, size)}
    return sample(model, pos, neg, latent, seed=7, steps=steps, cfg=cfg, sampler_name="Euler")["samples"]


# ------------------------------------------------------------------ masks


def test_rectangle_mask_is_one_inside_zero_outside_with_a_centred_feather():
    hard = rectangle_mask(8, 4, 2, 1, 4, 2)
    assert hard.shape == (1, 4, 8)
    assert hard[0, 1:3, 2:6].eq(1).all() and hard.sum() == 8
    soft = rectangle_mask(32, 1, 8, 0, 16, 1, feather=8)[0, 0]
    assert soft[:4].eq(0).all() and soft[12:20].eq(1).all() and soft[28:].eq(0).all()
    assert 0 < soft[8] < 1 and torch.all(soft[4:12].diff() > 0)  # ramps up across the edge
    border = rectangle_mask(16, 16, 0, 0, 8, 16, feather=4)[0]
    assert border[:, :6].eq(1).all() and border[:, 10:].eq(0).all()  # the border edges stay hard
    assert rectangle_mask(8, 8, 2, 2, 0, 4).eq(0).all()
    with pytest.raises(ValueError, match="feather"):
        rectangle_mask(8, 8, 0, 0, 4, 4, feather=-1)


# ------------------------------------------------------------ the values


def test_chaining_adds_regions_without_mutating_the_input(sd1):
    base, region = sd1["enc"]("a landscape"), sd1["enc"]("a red car")
    left, right = _halves()
    one = add_region(base, left, region)
    two = add_region(one, right, region, 0.5)
    assert base.extras == () and len(one.extras) == len(two.extras) == 1
    assert len(one.extras[0].regions) == 1 and len(two.extras[0].regions) == 2
    assert two.extras[0].regions[1].strength == 0.5 and two.embeds is base.embeds


def test_mistakes_name_the_input(sd1, sdxl):
    base = sd1["enc"]("a landscape")
    mask = _halves()[0]
    with pytest.raises(ValueError, match="region_conditioning was encoded for sdxl.*base conditioning is sd1"):
        add_region(base, mask, sdxl["enc"]("a red car"))
    with pytest.raises(ValueError, match="region_negative was encoded for sdxl"):
        add_region(base, mask, base, negative=sdxl["enc"]("blurry"))
    with pytest.raises(ValueError, match="strength must be between 0 and 1, got 1.5"):
        add_region(base, mask, base, 1.5)
    with pytest.raises(ValueError, match="mask must be a MASK"):
        add_region(base, torch.zeros(2, 2, 2, 2, 2), base)
    with pytest.raises(ValueError, match="region_conditioning carries adapters or regions"):
        add_region(base, mask, add_region(base, mask, base))


# ------------------------------------------------------- the composition


class _Config:
    time_cond_proj_dim = None


class _Unet:
    config = _Config()


def test_fold_back_follows_the_documented_formula():
    """eps = (max(0, 1 - S) eps_base + sum_r s_r m_r eps_r) / max(1, S), per pixel, per half."""
    d = 4
    empty = torch.zeros(1, 77, d)
    base = Conditioning("sd1", torch.zeros(1, 77, d), empty)
    m1 = torch.tensor([[[1.0, 1.0, 0.5, 0.0]]])  # [1, 1, 4] masks at latent size
    m2 = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
    cond = add_region(add_region(base, m1, base, 0.8), m2, base, 0.6, negative=base)
    hook = cond.extras[0]
    run = hooks.RunContext(
        model=ModelBundle("sd1", "fake", _Unet(), {}, torch.float32), batch=1, do_cfg=True,
        device=torch.device("cpu"), dtype=torch.float32, latent_size=(1, 4), pixel_size=(8, 32),
        timesteps=torch.tensor([1]), total_steps=1, first_index=0, scheduler=None, cfg=7.0,
        encoder_hidden_states=torch.zeros(2, 77, d), added_cond_kwargs=None,
    )
    step = hooks.StepContext(0, torch.tensor(1), 0.0, torch.zeros(1, 1, 1, 4), torch.zeros(2, 1, 1, 4),
                             torch.zeros(2, 77, d), None, row_roles=[hooks.NEGATIVE, hooks.POSITIVE])
    hook.begin(run, hooks.POSITIVE)
    hook.before_unet(step, run, hooks.POSITIVE)
    assert step.row_roles == [hooks.NEGATIVE, hooks.POSITIVE, hooks.POSITIVE, hooks.POSITIVE, hooks.NEGATIVE]
    assert step.x_in.shape[0] == step.encoder_hidden_states.shape[0] == 5
    neg0, pos0, r1, r2, n2 = (torch.randn(1, 1, 1, 4) for _ in range(5))
    out = hook.after_unet(torch.cat([neg0, pos0, r1, r2, n2]), step, run, hooks.POSITIVE)
    hook.end()
    w1, w2 = 0.8 * m1[:, None], 0.6 * m2[:, None]
    s = w1 + w2
    expected_pos = ((1 - s).clamp(min=0) * pos0 + w1 * r1 + w2 * r2) / s.clamp(min=1)
    expected_neg = ((1 - w2).clamp(min=0) * neg0 + w2 * n2) / w2.clamp(min=1)
    assert out.shape == (2, 1, 1, 4)
    torch.testing.assert_close(out[1:], expected_pos, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:1], expected_neg, rtol=0, atol=1e-6)
    assert torch.equal(out[1, ..., 3], pos0[0, ..., 3])  # no region there: the base alone


# ------------------------------------------------------- on the tiny UNet


def test_two_regions_with_the_base_prompt_equal_the_plain_prompt(sd1):
    enc, small = sd1["enc"], dict(size=8, steps=3)  # 64x64 images: float64 is slow on a CPU
    model64 = _model(sd1["pipe"], "sd1", torch.float64)
    base, neg = enc("a landscape", torch.float64), enc("blurry", torch.float64)
    left, right = (rectangle_mask(64, 64, 0, 0, 40, 64, feather=16),
                   rectangle_mask(64, 64, 24, 0, 40, 64, feather=16))  # overlapping, soft
    plain = _run(model64, base, neg, **small)
    regional = _run(model64, add_region(add_region(base, left, base, 1.0), right, base, 0.7), neg, **small)
    assert (regional - plain).abs().max() <= 1e-5

    # float32: only the UNet's batch-size-dependent rounding (see the module docstring)
    base32, neg32 = enc("a landscape"), enc("blurry")
    plain32 = _run(sd1["model"], base32, neg32, **small)
    regional32 = _run(sd1["model"], add_region(add_region(base32, left, base32), right, base32, 0.7), neg32, **small)
    assert (regional32 - plain32).abs().max() <= 1e-4 * plain32.abs().max()


def _locality(a, b):
    change = (a - b).abs().mean(dim=(0, 1))  # [h, w]
    return float(change[:, : SIZE // 2].mean()), float(change[:, SIZE // 2 :].mean())


def test_a_region_prompt_acts_inside_its_mask(sd1):
    enc, model = sd1["enc"], sd1["model"]
    base, neg, sky = enc("a landscape"), enc("blurry"), enc("a blue sky")
    left, right = _halves()
    car = _run(model, add_region(add_region(base, left, enc("a red car")), right, sky), neg)
    tree = _run(model, add_region(add_region(base, left, enc("a green tree in a forest")), right, sky), neg)
    inside, outside = _locality(car, tree)
    assert inside > 0.02 * car.abs().mean()  # the prompt does change its region (measured 6 %)
    assert inside >= MIN_LOCALITY * outside, (inside, outside)


def test_an_empty_mask_does_nothing_and_says_so(sd1, caplog):
    enc, model = sd1["enc"], sd1["model"]
    base, neg = enc("a landscape"), enc("blurry")
    plain = _run(model, base, neg, steps=2)
    with caplog.at_level(logging.WARNING):
        empty = _run(model, add_region(base, torch.zeros(1, 64, 64), enc("a red car")), neg, steps=2)
    assert torch.equal(empty, plain)
    assert "region 1 has an empty mask" in caplog.text


def test_regional_negative_acts_inside_its_mask(sd1):
    enc, model = sd1["enc"], sd1["model"]
    base, neg = enc("a landscape"), enc("blurry")
    left = _halves()[0]
    plain = _run(model, add_region(base, left, base), neg)
    negated = _run(model, add_region(base, left, base, negative=enc("a red car, watermark")), neg)
    inside, outside = _locality(negated, plain)
    assert inside >= MIN_LOCALITY * outside, (inside, outside)


def test_masks_are_resized_per_image_and_batches_checked(sd1, caplog):
    enc, model = sd1["enc"], sd1["model"]
    base, neg, car = enc("a landscape"), enc("blurry"), enc("a red car")
    masks = torch.zeros(2, 32, 32)  # another size than the 128x128 image, one per image
    masks[1, :, :16] = 1.0
    with caplog.at_level(logging.INFO):
        out = _run(model, add_region(base, masks, car), neg, batch=2, steps=2)
    plain = _run(model, base, neg, batch=2, steps=2)
    assert "resizing" in caplog.text
    assert (out[0] - plain[0]).abs().max() <= 1e-3 * plain.abs().max()  # image 0's mask is empty
    assert (out[1] - plain[1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="region 1's mask has a batch of 2 masks but the latent batch is 3"):
        _run(model, add_region(base, masks, car), neg, batch=3, steps=1)


class _SeesRows(hooks.SamplingHook):
    def before_unet(self, step, run, role):
        added = step.added_cond_kwargs
        self.rows = (int(step.x_in.shape[0]), list(step.row_roles),
                     {k: int(v.shape[0]) for k, v in added.items()} if added else None)


def test_sdxl_regions_and_other_hooks_see_the_wide_batch(sdxl):
    enc, model = sdxl["enc"], sdxl["model"]
    base, neg = enc("a landscape"), enc("blurry")
    left, right = _halves()
    seer = _SeesRows()
    car = _run(model.with_patch(seer), add_region(add_region(base, left, enc("a red car")), right, base), neg)
    P, N = hooks.POSITIVE, hooks.NEGATIVE
    assert seer.rows == (4, [N, P, P, P], {"text_embeds": 4, "time_ids": 4})
    tree = _run(model, add_region(add_region(base, left, enc("a green tree in a forest")), right, base), neg)
    inside, outside = _locality(car, tree)
    assert inside >= MIN_LOCALITY * outside, (inside, outside)

    model64 = _model(sdxl["pipe"], "sdxl", torch.float64)
    base64, neg64 = enc("a landscape", torch.float64), enc("blurry", torch.float64)
    plain = _run(model64, base64, neg64, size=8, steps=2)
    same = _run(model64, add_region(add_region(base64, left, base64), right, base64), neg64, size=8, steps=2)
    assert (same - plain).abs().max() <= 1e-5


def test_longer_region_prompts_and_cfg_one(sd1, caplog):
    enc, model = sd1["enc"], sd1["model"]
    base, neg = enc("a landscape"), enc("blurry")
    long_region = Conditioning("sd1", torch.cat([enc("a red car").embeds] * 2, dim=1), base.empty_chunk)
    left = _halves()[0]
    out = _run(model, add_region(base, left, long_region), neg, steps=2)  # 154 tokens vs 77: padded
    assert torch.isfinite(out).all()
    with caplog.at_level(logging.WARNING):
        no_cfg = _run(model, add_region(base, left, enc("a red car"), negative=neg), None, cfg=1.0, steps=2)
    assert torch.isfinite(no_cfg).all() and "negative prompt is not used" in caplog.text


def test_the_hook_is_found_by_the_sampler_and_ordered_first(sd1):
    base = sd1["enc"]("a landscape")
    cond = add_region(base, _halves()[0], base)
    bound = hooks.collect(sd1["model"].with_patch(_SeesRows()), cond, None, {})
    assert isinstance(bound[0].hook, RegionalHook) and bound[0].role == hooks.POSITIVE


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_regions_compose_with_controlnet_and_ip_adapter_in_one_run(family, sd1, sdxl, tmp_path):
    """One pass with regions, a masked ControlNet and a masked IP-Adapter (batch 2).

    Both adapters run after the regional hook and see its rows; the region's
    prompt must still act inside its mask, and each adapter must still act.
    """
    from diffusers import ControlNetModel
    from harness import models_ip_adapter as tiny_ip

    from diffusers_studio.nodes.engine.controlnet import ControlNetBundle, apply_controlnet
    from diffusers_studio.nodes.engine.image_encoder import load_image_encoder
    from diffusers_studio.nodes.engine.ip_adapter import apply_ip_adapter
    from diffusers_studio.nodes.engine.ip_adapter_loading import load_ip_adapter

    data = sd1 if family == "sd1" else sdxl
    enc, model = data["enc"], data["model"]
    vit = tiny_ip.VIT_H if family == "sd1" else tiny_ip.VIT_BIGG
    shape = tiny_ip.ENCODER_SHAPES[vit]
    adapter_file = tiny_ip.save_adapter(
        tiny_ip.adapter_state_dict(model.unet, "base", shape["projection_dim"], 5), tmp_path / "ip.safetensors")
    encoder_file = tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(vit, 0), tmp_path / vit)
    adapter = load_ip_adapter(str(adapter_file), load_image_encoder(str(encoder_file)), name="ip")
    torch.manual_seed(0)
    control = ControlNetBundle(family, "cn", ControlNetModel.from_unet(model.unet), torch.float32)

    left, right = _halves()
    picture = torch.rand(1, PIXELS, PIXELS, 3, generator=torch.Generator().manual_seed(1))
    adapted = apply_ip_adapter(model, adapter, images=picture, weight=1.0, mask=right)
    base, neg = enc("a landscape"), enc("blurry")

    def run(region_prompt, with_adapters=True):
        pos = add_region(base, left, enc(region_prompt))
        n = neg
        if with_adapters:
            pos, n = apply_controlnet(pos, n, control, picture, strength=1.0, mask=right)
        return _run(adapted if with_adapters else model, pos, n, batch=2)

    car, tree = run("a red car"), run("a green tree in a forest")
    assert torch.isfinite(car).all() and car.shape[0] == 2
    inside, outside = _locality(car, tree)
    assert inside >= MIN_LOCALITY * outside, (inside, outside)
    assert (car - run("a red car", with_adapters=False)).abs().max() > 1e-2  # the adapters act too
