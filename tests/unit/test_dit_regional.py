"""Regional prompts on SD3 and Flux (dev, schnell): the mathematical properties of the composition.

There is no diffusers reference pipeline for regional prompts, so these tests
check what the method (engine/regional.py) promises, on the tiny transformers
of tests/tiny_dit.py:

- a full-image mask at strength 1 gives the region's prompt alone (the region
  rows get the region's own pooled embedding, Flux guidance and ControlNet
  residuals), to float32 rounding;
- after ONE Euler step the result is linear in the velocity, so a soft mask m
  (feathered, any strength s) gives base + s*m*(region - base) per latent pixel,
  and the base run exactly where m = 0. After more steps the outside drifts:
  joint attention lets every image token see the region's tokens (measured in
  docs/families.md, not asserted);
- mistakes (another aspect ratio, another family's prompt, another
  max_sequence_length) are refused naming the input, the value and the fix.
"""
from __future__ import annotations

import logging

import pytest
import torch

import dit_loras
import tiny_dit
from diffusers_studio.nodes.engine import lora as lora_mod
from diffusers_studio.nodes.engine import controlnet_loading
from diffusers_studio.nodes.engine.components import SD1, Conditioning
from diffusers_studio.nodes.engine.controlnet import apply_controlnet
from diffusers_studio.nodes.engine.regional import add_region, rectangle_mask
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.text_encoding import encode_prompt

TOL = 1e-5
LATENT = 8  # latent pixels per side (64x64 pictures with the tiny VAE's factor 8)
# (folder, cfg): SD3 with CFG and a negative prompt, Flux dev with its distilled guidance, schnell plain.
CASES = [("sd3", 4.0), ("flux-dev", 1.0), ("flux-schnell", 1.0)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-regional")
    tiny_dit.sd3_pipeline(0).save_pretrained(str(root / "sd3"), safe_serialization=True)
    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(root / "flux-dev"), safe_serialization=True)
    tiny_dit.flux_pipeline(0, dev=False).save_pretrained(str(root / "flux-schnell"), safe_serialization=True)
    tiny_dit.tiny_flux_controlnet(1).save_pretrained(str(root / "cn-flux"))
    tiny_dit.tiny_sd3_controlnet(3).save_pretrained(str(root / "cn-sd3"))
    tiny_dit.flux_fill_pipeline(0).save_pretrained(str(root / "flux-fill"), safe_serialization=True)
    return root


def _load(folders, name):
    return tiny_dit.load_cached(folders / name)


def _run(model, pos, neg, cfg, steps=2, seed=3):
    latent = {"samples": torch.zeros(1, 16, LATENT, LATENT)}
    return sample(model, pos, neg, latent, seed=seed, steps=steps, cfg=cfg, sampler_name="Euler")["samples"]


def _left_half():
    mask = torch.zeros(1, LATENT, LATENT)
    mask[..., : LATENT // 2] = 1.0
    return mask


@pytest.mark.parametrize("name,cfg", CASES)
def test_a_full_image_mask_equals_the_region_prompt_alone(folders, name, cfg):
    model, text, _ = _load(folders, name)
    base, car, neg = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car"), encode_prompt(text, "")
    regional = add_region(base, torch.ones(1, 64, 64), car)
    got = _run(model, regional, neg, cfg)
    alone = _run(model, car, neg, cfg)
    plain = _run(model, base, neg, cfg)
    assert (got - alone).abs().max() <= TOL
    assert (got - plain).abs().max() > 100 * TOL  # the test can fail: the base prompt alone is far off


@pytest.mark.parametrize("name,cfg", CASES)
def test_one_step_is_the_masked_mix_of_base_and_region(folders, name, cfg):
    """A feathered mask at strength 0.6: base + 0.6 * m * (region - base) per latent pixel, m = 0: the base."""
    model, text, _ = _load(folders, name)
    base, car, neg = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car"), encode_prompt(text, "")
    mask = rectangle_mask(LATENT, LATENT, 0.0, 0.0, 4.0, LATENT, feather=2.0)  # at the latent size: m as it acts
    got = _run(model, add_region(base, mask, car, strength=0.6), neg, cfg, steps=1)
    plain, alone = _run(model, base, neg, cfg, steps=1), _run(model, car, neg, cfg, steps=1)
    expected = plain + 0.6 * mask[:, None] * (alone - plain)
    assert (got - expected).abs().max() <= TOL
    outside = mask[0] == 0
    assert outside.any() and (got[..., outside] - plain[..., outside]).abs().max() <= TOL
    inside = mask[0] == 1
    assert (got[..., inside] - plain[..., inside]).abs().max() > 100 * TOL


def test_a_regional_negative_acts_inside_its_mask_on_sd3(folders):
    model, text, _ = _load(folders, "sd3")
    base, neg, blurry = encode_prompt(text, "a quiet landscape"), encode_prompt(text, ""), encode_prompt(text, "blurry")
    mask = _left_half()
    got = _run(model, add_region(base, mask, base, negative=blurry), neg, 4.0, steps=1)
    plain = _run(model, base, neg, 4.0, steps=1)
    with_neg = _run(model, base, blurry, 4.0, steps=1)
    expected = plain + mask[:, None] * (with_neg - plain)
    assert (got - expected).abs().max() <= TOL
    assert (got - plain).abs().max() > 100 * TOL


def test_two_regions_that_repeat_the_base_prompt_change_nothing(folders):
    model, text, _ = _load(folders, "flux-dev")
    base = encode_prompt(text, "a quiet landscape")
    regional = add_region(add_region(base, _left_half(), base), torch.ones(1, 64, 64), base, strength=0.5)
    assert (_run(model, regional, None, 1.0) - _run(model, base, None, 1.0)).abs().max() <= TOL


@pytest.mark.parametrize("name,cn_name", [("flux-dev", "cn-flux"), ("sd3", "cn-sd3")])
def test_regions_with_lora_and_controlnet_in_one_run(folders, name, cn_name):
    """LoRA merged, a DiT ControlNet on the prompt and a full-image region: the region prompt alone, with both."""
    model, text, vae = _load(folders, name)
    cfg = dict(CASES)[name]
    peft = dit_loras.peft_lora(model.unet, None, seed=4)
    model, text = lora_mod.apply_lora(model, text, lora_mod.lora_from_state_dict(peft, "style.safetensors"), 1.0, 1.0)
    cn = controlnet_loading.load_controlnet(folders / cn_name, dtype="float32", use_cache=False)
    torch.manual_seed(5)
    hint = (torch.rand(1, 64, 64, 3) * 255).round() / 255
    base, car, neg = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car"), encode_prompt(text, "")
    regional, neg_cn = apply_controlnet(add_region(base, torch.ones(1, 64, 64), car), neg, cn, hint, strength=0.8,
                                        vae=vae)
    car_cn, car_neg = apply_controlnet(car, neg, cn, hint, strength=0.8, vae=vae)  # one unit on both, as above
    base_cn, base_neg = apply_controlnet(base, neg, cn, hint, strength=0.8, vae=vae)
    got = _run(model, regional, neg_cn, cfg)
    assert (got - _run(model, car_cn, car_neg, cfg)).abs().max() <= TOL
    assert (got - _run(model, base_cn, base_neg, cfg)).abs().max() > 100 * TOL


def test_a_mask_of_another_aspect_ratio_is_refused(folders):
    model, text, _ = _load(folders, "flux-dev")
    base, car = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car")
    with pytest.raises(ValueError, match=r"region 1's mask is 64x32 pixels, the image 64x64.*aspect ratio.*width"):
        _run(model, add_region(base, torch.ones(1, 32, 64), car), None, 1.0, steps=1)
    # The same aspect ratio at another size is resized (32x32 for a 64x64 picture).
    _run(model, add_region(base, torch.ones(1, 32, 32), car), None, 1.0, steps=1)


def test_a_prompt_of_another_family_or_length_is_refused(folders):
    model, text, _ = _load(folders, "flux-dev")
    base, car = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car")
    sd1 = Conditioning(family=SD1, embeds=torch.zeros(1, 77, 32), empty_chunk=torch.zeros(1, 77, 32))
    with pytest.raises(ValueError, match="region_conditioning was encoded for sd1, but the base conditioning is flux"):
        add_region(base, _left_half(), sd1)
    with pytest.raises(ValueError, match="region_conditioning was encoded for flux.*base conditioning is sd1"):
        add_region(sd1, _left_half(), car)
    short = encode_prompt(text, "a red car", max_sequence_length=64)
    with pytest.raises(ValueError, match=r"region_conditioning is 64 tokens long, the base conditioning 512.*"
                                         "same max_sequence_length"):
        add_region(base, _left_half(), short)
    sd3_model, sd3_text, _ = _load(folders, "sd3")
    with pytest.raises(ValueError, match="region_negative was encoded for sd3"):
        add_region(base, _left_half(), car, negative=encode_prompt(sd3_text, "blurry"))
    with pytest.raises(ValueError, match="positive conditioning was encoded for flux.*encode the prompt"):
        _run(sd3_model, add_region(base, _left_half(), car), encode_prompt(sd3_text, ""), 4.0, steps=1)


def test_a_region_guidance_is_not_used_and_says_so(folders, caplog):
    """Flux dev: the region rows copy the base rows' guidance; a region's own DSFluxGuidance is warned about."""
    from diffusers_studio.nodes.engine.flux_guidance import with_guidance

    model, text, _ = _load(folders, "flux-dev")
    base, car = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car")
    plain = _run(model, add_region(base, _left_half(), car), None, 1.0, steps=1)
    with caplog.at_level(logging.WARNING):
        got = _run(model, add_region(base, _left_half(), with_guidance(car, 9.0)), None, 1.0, steps=1)
    assert "region 1's prompt carries guidance 9.0, which is not used" in caplog.text
    assert torch.equal(got, plain)


def test_one_mask_per_image_in_a_batch(folders):
    """Flux schnell, two images: image 0's mask is empty (its base run), image 1's covers it all (its region run)."""
    model, text, _ = _load(folders, "flux-schnell")
    base, car = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car")
    masks = torch.zeros(2, 64, 64)
    masks[1] = 1.0

    def run(positive):
        latent = {"samples": torch.zeros(2, 16, LATENT, LATENT)}
        return sample(model, positive, None, latent, seed=3, steps=2, cfg=1.0, sampler_name="Euler")["samples"]

    got, plain, alone = run(add_region(base, masks, car)), run(base), run(car)
    assert (got[0] - plain[0]).abs().max() <= TOL
    assert (got[1] - alone[1]).abs().max() <= TOL
    with pytest.raises(ValueError, match="region 1's mask has a batch of 2 masks but the latent batch is 3"):
        sample(model, add_region(base, masks, car), None, {"samples": torch.zeros(3, 16, LATENT, LATENT)},
               seed=3, steps=1, cfg=1.0, sampler_name="Euler")


@pytest.mark.parametrize("name", ["flux-fill", "sd3"])
def test_regions_inside_an_inpaint_run(folders, name):
    """DSInpaint's LATENT (FLUX.1 Fill's extra channels, SD3's noise_mask blend) with a full-image region."""
    from diffusers_studio.nodes.engine import inpaint

    model, text, vae = _load(folders, name)
    torch.manual_seed(6)
    image = torch.rand(1, 64, 64, 3)
    hole = torch.zeros(1, 64, 64)
    hole[:, 16:48, 16:48] = 1.0
    latent = inpaint.prepare(vae, model, image, hole, seed=2).latent
    base, car, neg = encode_prompt(text, "a quiet landscape"), encode_prompt(text, "a red car"), encode_prompt(text, "")
    cfg = 4.0 if name == "sd3" else 1.0

    def run(positive):
        return sample(model, positive, neg, latent, seed=3, steps=2, cfg=cfg, sampler_name="Euler")["samples"]

    got = run(add_region(base, torch.ones(1, 64, 64), car))
    assert (got - run(car)).abs().max() <= TOL
    assert (got - run(base)).abs().max() > 100 * TOL
