"""SD3 and Flux.1 in the engine alone: detection, encoding, schedules, packing, refusals.

Tiny components (tests/tiny_dit.py) saved as diffusers folders and loaded
back through loading.load_checkpoint; encodings are compared with the
pipelines' own encode_prompt, the schedules with their retrieve_timesteps.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch

import tiny_dit
import tiny_models
from diffusers_studio.nodes.engine import families
from diffusers_studio.nodes.engine.flux_guidance import with_guidance
from diffusers_studio.nodes.engine.loading import load_checkpoint, peek_family
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.text_encoding import encode_prompt

TOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    made = {
        "sd3": tiny_dit.sd3_pipeline(0),
        "sd3-no-t5": tiny_dit.sd3_pipeline(0, with_t5=False),
        "flux-dev": tiny_dit.flux_pipeline(0, dev=True),
        "flux-schnell": tiny_dit.flux_pipeline(0, dev=False),
    }
    for name, pipe in made.items():
        pipe.save_pretrained(str(root / name), safe_serialization=True)
    return root


def _load(folders, name):
    return load_checkpoint(folders / name, dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())


def _pipe(pipe_cls, bundles):
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, text, vae = bundles
    parts = {"transformer": model.unet, "vae": vae.vae,
             "scheduler": FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)}
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")]
    for (e, t), enc, tok in zip(names, text.text_encoders, text.tokenizers):
        parts[e], parts[t] = enc, tok
    if model.family == "flux":
        parts.update(image_encoder=None, feature_extractor=None)
    return pipe_cls(**parts)


@pytest.mark.parametrize(
    "name,expected",
    [("sd3", ("sd3", "base")), ("sd3-no-t5", ("sd3", "base")), ("flux-dev", ("flux", "dev")),
     ("flux-schnell", ("flux", "schnell"))],
)
def test_family_detected_from_model_index(folders, name, expected):
    family = peek_family(folders / name)
    assert (family.family, family.variant) == expected
    model, text, vae = _load(folders, name)
    assert (model.family, model.variant) == expected
    assert model.latent_shift_factor == pytest.approx(vae.shift_factor) and vae.shift_factor != 0.0
    assert model.latent_scaling_factor == pytest.approx(vae.scaling_factor)


def test_sd3_without_t5_keeps_its_slot_empty(folders):
    _, text, _ = _load(folders, "sd3-no-t5")
    assert text.text_encoders[2] is None and text.tokenizers[2] is None
    assert text.joint_width == 96


@pytest.mark.parametrize("name", ["sd3", "sd3-no-t5"])
def test_sd3_encoding_matches_encode_prompt(folders, name):
    from diffusers import StableDiffusion3Pipeline

    bundles = _load(folders, name)
    cond = encode_prompt(bundles[1], "a photo of a cat")
    embeds, _, pooled, _ = _pipe(StableDiffusion3Pipeline, bundles).encode_prompt(
        "a photo of a cat", None, None, do_classifier_free_guidance=False, device=torch.device("cpu"),
    )
    assert cond.embeds.shape == (1, 77 + 256, 96)
    assert torch.allclose(cond.embeds, embeds, atol=TOL) and torch.allclose(cond.pooled, pooled, atol=TOL)
    if name == "sd3-no-t5":
        assert not cond.embeds[:, 77:].any()


def test_sd3_clip_skip_and_sequence_length(folders):
    from diffusers import StableDiffusion3Pipeline

    bundles = _load(folders, "sd3")
    cond = encode_prompt(bundles[1], "a dog", clip_skip=2, max_sequence_length=64)
    embeds, _, pooled, _ = _pipe(StableDiffusion3Pipeline, bundles).encode_prompt(
        "a dog", None, None, do_classifier_free_guidance=False, device=torch.device("cpu"), clip_skip=1,
        max_sequence_length=64,
    )
    assert cond.embeds.shape == (1, 77 + 64, 96)
    assert torch.allclose(cond.embeds, embeds, atol=TOL)


@pytest.mark.parametrize("name,length", [("flux-dev", 512), ("flux-schnell", 256)])
def test_flux_encoding_matches_encode_prompt(folders, name, length):
    from diffusers import FluxPipeline

    bundles = _load(folders, name)
    cond = encode_prompt(bundles[1], "a red apple on a table")
    embeds, pooled, _ = _pipe(FluxPipeline, bundles).encode_prompt(
        "a red apple on a table", None, device=torch.device("cpu"), max_sequence_length=length,
    )
    assert cond.embeds.shape == (1, length, 48)
    assert torch.allclose(cond.embeds, embeds, atol=TOL) and torch.allclose(cond.pooled, pooled, atol=TOL)


def test_break_is_removed_with_a_warning(folders, caplog):
    """One token window has no chunks; emphasis is applied (tests/unit/test_window_emphasis.py)."""
    _, text, _ = _load(folders, "flux-schnell")
    plain = encode_prompt(text, "a red apple")
    with caplog.at_level(logging.WARNING):
        broken = encode_prompt(text, "a red BREAK apple")
    assert "BREAK" in caplog.text
    assert torch.equal(broken.embeds, plain.embeds)


def test_clip_skip_and_sequence_length_refused_for_flux(folders):
    """Prompt editing is taken (tests/unit/test_prompt_editing_dit.py); clip_skip and a long T5 are not."""
    _, text, _ = _load(folders, "flux-dev")
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompt(text, "a cat", clip_skip=2)
    with pytest.raises(ValueError, match="max_sequence_length"):
        encode_prompt(text, "a cat", max_sequence_length=1000)


def test_max_sequence_length_refused_for_sd1():
    from diffusers_studio.nodes.engine.components import TextEncoderBundle

    parts = tiny_models.tiny_sd1_components(0)
    bundle = TextEncoderBundle("sd1", "tiny", (parts["tokenizer"],), (parts["text_encoder"],))
    with pytest.raises(ValueError, match="max_sequence_length"):
        encode_prompt(bundle, "a cat", max_sequence_length=77)


@pytest.mark.parametrize("steps,latent", [(4, (8, 8)), (6, (64, 96))])
def test_flux_schedule_matches_the_pipeline(folders, steps, latent):
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    model, _, _ = _load(folders, "flux-dev")
    family = families.of(model)
    scheduler = family.make_scheduler(model, "Euler", "normal", latent)
    scheduler.set_timesteps(steps)
    reference = tiny_dit.flux_scheduler(dev=True)
    config = reference.config
    mu = calculate_shift((latent[0] // 2) * (latent[1] // 2), config.base_image_seq_len, config.max_image_seq_len,
                         config.base_shift, config.max_shift)
    expected, _ = retrieve_timesteps(reference, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert torch.allclose(scheduler.timesteps, expected)


def test_sd3_schedule_uses_the_folder_shift(folders):
    model, _, _ = _load(folders, "sd3")
    scheduler = families.of(model).make_scheduler(model, "Euler", "normal", (8, 8))
    scheduler.set_timesteps(5)
    reference = tiny_dit.sd3_scheduler()
    reference.set_timesteps(5)
    assert torch.equal(scheduler.timesteps, reference.timesteps)


def test_flow_img2img_start_rounds_as_diffusers():
    flux = families.get("flux", "dev")
    assert flux.img2img_start(4, 0.6) == 1  # int(4 - 2.4)
    assert families.get("sd1").img2img_start(4, 0.6) == 2  # 4 - int(2.4)
    assert flux.img2img_start(10, 1.0) == 0


def test_pack_round_trip_matches_the_pipeline():
    from diffusers import FluxPipeline

    from diffusers_studio.nodes.engine.families.flux import latent_image_ids, pack, unpack

    x = torch.randn(2, 16, 6, 8)
    assert torch.equal(pack(x), FluxPipeline._pack_latents(x, 2, 16, 6, 8))
    assert torch.equal(unpack(pack(x), 6, 8), x)
    assert torch.equal(latent_image_ids(3, 4, "cpu", torch.float32),
                       FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32))


def _conds(folders, name):
    model, text, _ = _load(folders, name)
    return model, encode_prompt(text, "a cat"), encode_prompt(text, "")


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_non_flow_samplers_refused(folders, sampler):
    model, pos, neg = _conds(folders, "flux-schnell")
    with pytest.raises(ValueError, match=f"sampler_name {re.escape(repr(sampler))}.*Euler"):
        sample(model, pos, neg, {"samples": torch.zeros(1, 16, 8, 8)}, seed=0, steps=2, cfg=1.0,
               sampler_name=sampler)


def test_latent_shape_checks(folders):
    model, pos, neg = _conds(folders, "flux-dev")
    with pytest.raises(ValueError, match="EmptySD3LatentImage"):
        sample(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=0, steps=2, cfg=1.0, sampler_name="Euler")
    with pytest.raises(ValueError, match="multiples of 2"):
        sample(model, pos, neg, {"samples": torch.zeros(1, 16, 7, 8)}, seed=0, steps=2, cfg=1.0, sampler_name="Euler")
    from diffusers_studio.nodes.engine.inpaint import InpaintModelInputs

    sd1_hook = InpaintModelInputs(torch.ones(1, 1, 8, 8), torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="InpaintModelInputs.*SD1.x / SDXL"):
        sample(model, pos, neg, {"samples": torch.zeros(1, 16, 8, 8), "ds_hooks": [sd1_hook]}, seed=0,
               steps=2, cfg=1.0, sampler_name="Euler")


def test_conditioning_of_another_family_refused(folders):
    model, _, _ = _load(folders, "flux-dev")
    _, sd3_pos, _ = _conds(folders, "sd3")
    with pytest.raises(ValueError, match="encoded for sd3"):
        sample(model, sd3_pos, None, {"samples": torch.zeros(1, 16, 8, 8)}, seed=0, steps=2, cfg=1.0,
               sampler_name="Euler")


def test_flux_guidance_only_for_dev(folders):
    _, dev_pos, _ = _conds(folders, "flux-dev")
    assert with_guidance(dev_pos, 2.0).guidance == 2.0 and dev_pos.guidance is None
    _, schnell_pos, _ = _conds(folders, "flux-schnell")
    with pytest.raises(ValueError, match="no guidance embedding"):
        with_guidance(schnell_pos, 2.0)
    with pytest.raises(ValueError, match="guidance must be between"):
        with_guidance(dev_pos, -1.0)


def test_guidance_changes_flux_dev_result(folders):
    model, pos, neg = _conds(folders, "flux-dev")
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    a = sample(model, pos, neg, latent, seed=1, steps=2, cfg=1.0, sampler_name="Euler")["samples"]
    b = sample(model, with_guidance(pos, 9.0), neg, latent, seed=1, steps=2, cfg=1.0, sampler_name="Euler")["samples"]
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kind,refusing", [
    (families.IP_ADAPTER, ("sd3",)),  # Flux takes XLabs IP-Adapters (tests/unit/test_ip_adapter_flux.py)
])
def test_adapters_refused_with_the_reason(kind, refusing):
    for family in (families.get("sd3"), families.get("flux", "dev"), families.get("flux", "schnell")):
        if family.family not in refusing:
            assert family.adapter_refusal(kind) is None
            continue
        assert family.adapter_refusal(kind)
        with pytest.raises(ValueError, match="not supported for"):
            family.refuse_adapter(kind, "thing")
    families.get("sdxl").refuse_adapter(kind, "thing")  # the UNet families take them


def test_lora_applies_to_the_flow_families():
    """SD3 / Flux take LoRA (tests/unit/test_dit_lora.py, tests/nodes/test_dit_lora_graph.py)."""
    for family in (families.get("sd3"), families.get("flux", "dev"), families.get("flux", "schnell")):
        assert family.adapter_refusal(families.LORA) is None


def test_controlnet_is_taken_by_the_flow_families():
    """Flux / SD3 ControlNets run through controlnet_dit.py (tests/unit/test_dit_controlnet.py)."""
    for family in (families.get("sd3"), families.get("flux", "dev"), families.get("flux", "schnell")):
        assert family.adapter_refusal(families.CONTROLNET) is None


def test_regional_prompts_are_taken_by_the_flow_families():
    """Regional prompts compose velocities by mask (regional.py; tests/unit/test_dit_regional.py)."""
    for family in (families.get("sd3"), families.get("flux", "dev"), families.get("flux", "schnell")):
        assert family.adapter_refusal(families.REGIONAL) is None


def test_inpainting_is_not_refused():
    for family in (families.get("sd3"), families.get("flux", "dev"), families.get("flux", "schnell")):
        assert family.adapter_refusal(families.INPAINT) is None


def test_flux_batch_of_two_matches_the_pipeline(folders):
    """Sample i of a batch uses seed + i, as FluxPipeline with one generator per image (true CFG on)."""
    from diffusers import FluxPipeline

    bundles = _load(folders, "flux-dev")
    model, text, _ = bundles
    pos, neg = encode_prompt(text, "a cat"), encode_prompt(text, "fog")
    out = sample(model, pos, neg, {"samples": torch.zeros(2, 16, 8, 8)}, seed=4, steps=3, cfg=2.0,
                 sampler_name="Euler")["samples"]
    pipe = _pipe(FluxPipeline, bundles)
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(prompt="a cat", negative_prompt="fog", true_cfg_scale=2.0, num_images_per_prompt=2,
                   num_inference_steps=3, height=64, width=64, output_type="latent",
                   generator=[torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)]).images
    latents = pipe._unpack_latents(latents, 64, 64, 8) / model.latent_scaling_factor + model.latent_shift_factor
    assert float((out - latents).abs().max()) <= 1e-4


@pytest.mark.parametrize("schedule,flag", [("karras", "use_karras_sigmas"), ("exponential", "use_exponential_sigmas")])
def test_flux_schedules_are_the_scheduler_flags(folders, schedule, flag):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    model, _, _ = _load(folders, "flux-dev")
    scheduler = families.of(model).make_scheduler(model, "Euler", schedule, (8, 8))
    scheduler.set_timesteps(5)
    reference = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config, **{flag: True})
    config = reference.config
    mu = calculate_shift(16, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift)
    reference.set_timesteps(sigmas=np.linspace(1.0, 1 / 5, 5), mu=mu)
    assert torch.allclose(scheduler.timesteps, reference.timesteps)
    with pytest.raises(ValueError, match="sgm_uniform"):
        families.of(model).make_scheduler(model, "Euler", "sgm_uniform", (8, 8))
