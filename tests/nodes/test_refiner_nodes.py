"""The SDXL refiner through the nodes, against diffusers' refiner pipeline.

A tiny refiner shaped like sd_xl_refiner_1.0 (bigG alone, four levels, 5
time ids) is saved by conftest.py as an LDM single file and as a diffusers
folder (StableDiffusionXLImg2ImgPipeline with text_encoder=None,
requires_aesthetics_score=True) and loaded back through DSLoadModel. The
reference is that pipeline built from the very same loaded modules, same seed
and strength. Float32, max abs difference at most 1e-4 on decoded images.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

TOL = 1e-4
REFINER_FILE = "tiny-sdxl-refiner.safetensors"
REFINER_FOLDER = "tiny-sdxl-refiner"
BASE_FILE = "tiny-sdxl.safetensors"
PROMPT = "a photo of a cat"


def _nodes():
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode, DSVAEEncode

    return DSLoadModel, DSTextEncode, DSSampler, DSVAEDecode, DSVAEEncode


def _photo(seed: int = 3):
    """A user's picture: PIL for the pipeline, and the same pixels as an IMAGE for the nodes."""
    import pil_inputs

    photo = pil_inputs.picture(seed)
    return photo, pil_inputs.as_image(photo)


def _refiner_pipeline(bundles, sampler, schedule):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from diffusers_studio.nodes.engine.schedulers import make_scheduler

    model, text_encoder, vae = bundles
    pipe = StableDiffusionXLImg2ImgPipeline(
        unet=model.unet,
        vae=vae.vae,
        scheduler=make_scheduler(model.scheduler_config, sampler, schedule),
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=text_encoder.text_encoders[0],
        tokenizer_2=text_encoder.tokenizers[0],
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,  # as the refiner's model_index.json
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diff(images, expected) -> float:
    return float(np.abs(images.numpy() - expected).max())


@pytest.mark.parametrize("model_name", [REFINER_FILE, REFINER_FOLDER])
def test_refiner_loads_as_sdxl_refiner(models_dir, model_name):
    load = _nodes()[0]
    model, text_encoder, vae = load.execute(model_name, "float32").args
    assert (model.family, model.variant) == ("sdxl", "refiner") and model.is_refiner
    assert text_encoder.variant == vae.variant == "refiner"
    assert len(text_encoder.text_encoders) == len(text_encoder.tokenizers) == 1
    assert text_encoder.tokenizers[0].pad_token == "!"
    assert model.unet.config.projection_class_embeddings_input_dim == 5 * 8 + 32


@pytest.mark.parametrize("model_name", [REFINER_FILE, REFINER_FOLDER])
@pytest.mark.parametrize("sampler,schedule", [("Euler", "normal"), ("DPM++ 2M", "karras")])
def test_refiner_img2img_matches_diffusers(models_dir, model_name, sampler, schedule):
    load, encode, sampler_node, decode, vae_encode = _nodes()
    bundles = load.execute(model_name, "float32").args
    model, text_encoder, vae = bundles
    photo, pixels = _photo()
    latent = vae_encode.execute(vae, pixels).args[0]
    positive = encode.execute(text_encoder, PROMPT, 1).args[0]
    negative = encode.execute(text_encoder, "", 1).args[0]
    assert positive.embeds.shape == (1, 77, 32) and positive.pooled.shape == (1, 32)
    out = sampler_node.execute(
        model, positive, negative, latent, 42, 10, 5.0, sampler, schedule, 0.3,
    ).args[0]
    images = decode.execute(vae, out).args[0]

    # No negative prompt: force_zeros_for_empty_prompt is False for the
    # refiner, so diffusers encodes "" exactly as the empty DSTextEncode does.
    expected = _refiner_pipeline(bundles, sampler, schedule)(
        prompt=PROMPT, image=photo, strength=0.3, num_inference_steps=10,
        guidance_scale=5.0, generator=torch.Generator().manual_seed(42), output_type="np",
    ).images
    diff = _diff(images, expected)
    print(f"refiner {model_name} {sampler}/{schedule}: max abs difference {diff:.3g}")
    assert diff <= TOL, f"max abs difference {diff}"


def test_refiner_aesthetic_scores_match_diffusers(models_dir):
    load, encode, sampler_node, decode, vae_encode = _nodes()
    bundles = load.execute(REFINER_FILE, "float32").args
    model, text_encoder, vae = bundles
    photo, pixels = _photo(4)
    latent = vae_encode.execute(vae, pixels).args[0]
    positive = encode.execute(text_encoder, PROMPT, 1).args[0]
    negative = encode.execute(text_encoder, "blurry", 1).args[0]

    from diffusers_studio.nodes.sdxl_conditioning import DSSDXLAestheticScore

    def run(score, negative_score):
        pos = DSSDXLAestheticScore.execute(positive, score).args[0]
        neg = DSSDXLAestheticScore.execute(negative, negative_score).args[0]
        out = sampler_node.execute(model, pos, neg, latent, 7, 10, 6.0, "Euler", "normal", 0.5).args[0]
        return decode.execute(vae, out).args[0]

    images = run(8.5, 1.0)
    expected = _refiner_pipeline(bundles, "Euler", "normal")(
        prompt=PROMPT, negative_prompt="blurry", image=photo, strength=0.5,
        num_inference_steps=10, guidance_scale=6.0, aesthetic_score=8.5, negative_aesthetic_score=1.0,
        generator=torch.Generator().manual_seed(7), output_type="np",
    ).images
    diff = _diff(images, expected)
    print(f"refiner aesthetic 8.5/1.0: max abs difference {diff:.3g}")
    assert diff <= TOL, f"max abs difference {diff}"
    assert not torch.allclose(images, run(6.0, 2.5)), "the aesthetic scores changed nothing"
    # Without the nodes the refiner takes diffusers' defaults, 6 and 2.5.
    plain = sampler_node.execute(model, positive, negative, latent, 7, 10, 6.0, "Euler", "normal", 0.5).args[0]
    assert torch.equal(decode.execute(vae, plain).args[0], run(6.0, 2.5))


@pytest.mark.parametrize("sampler,schedule", [("Euler", "normal"), ("DPM++ 2M", "karras")])
def test_base_to_refiner_hand_off_matches_diffusers(models_dir, sampler, schedule):
    """Base SDXL to a step of 10, the refiner from that step: diffusers' denoising_end /
    denoising_start 0.6 ensemble of experts (the sdxl_refiner.json workflow)."""
    from diffusers import StableDiffusionXLPipeline

    from diffusers_studio.nodes.engine.schedulers import make_scheduler

    load, encode, sampler_node, decode, _ = _nodes()
    base = load.execute(BASE_FILE, "float32").args
    refiner = load.execute(REFINER_FILE, "float32").args
    b_model, b_text, _ = base
    r_model, r_text, r_vae = refiner
    # diffusers cuts at a timestep (1000 * (1 - 0.6)); the nodes at a step:
    # the step where the schedule crosses it (6 for normal, fewer for karras).
    probe = make_scheduler(b_model.scheduler_config, sampler, schedule)
    probe.set_timesteps(10)
    switch = int((probe.timesteps >= round(1000 * (1 - 0.6))).sum())
    assert 0 < switch < 10
    empty = {"samples": torch.zeros(1, 4, 8, 8)}
    handed = sampler_node.execute(
        b_model, encode.execute(b_text, PROMPT, 1).args[0], encode.execute(b_text, "blurry", 1).args[0], empty,
        11, 10, 7.0, sampler, schedule, 1.0, 0, switch,
    ).args[0]
    out = sampler_node.execute(
        r_model, encode.execute(r_text, PROMPT, 1).args[0], encode.execute(r_text, "blurry", 1).args[0], handed,
        11, 10, 7.0, sampler, schedule, 1.0, switch, 10000,
    ).args[0]
    images = decode.execute(r_vae, out).args[0]

    b_unet_model, b_te, b_vae = base
    base_pipe = StableDiffusionXLPipeline(
        unet=b_unet_model.unet, vae=b_vae.vae, scheduler=make_scheduler(b_unet_model.scheduler_config, sampler, schedule),
        text_encoder=b_te.text_encoders[0], text_encoder_2=b_te.text_encoders[1],
        tokenizer=b_te.tokenizers[0], tokenizer_2=b_te.tokenizers[1], add_watermarker=False,
    )
    base_pipe.set_progress_bar_config(disable=True)
    latents = base_pipe(
        prompt=PROMPT, negative_prompt="blurry", num_inference_steps=10, guidance_scale=7.0, height=64, width=64,
        denoising_end=0.6, output_type="latent", generator=torch.Generator().manual_seed(11),
    ).images
    expected = _refiner_pipeline(refiner, sampler, schedule)(
        prompt=PROMPT, negative_prompt="blurry", image=latents, num_inference_steps=10, guidance_scale=7.0,
        denoising_start=0.6, generator=torch.Generator().manual_seed(11), output_type="np",
    ).images
    diff = _diff(images, expected)
    print(f"hand-off base->refiner at step {switch} {sampler}/{schedule}: max abs difference {diff:.3g}")
    assert diff <= TOL, f"max abs difference {diff}"


# ------------------------------------------------------------------ bad input


def test_base_prompt_on_the_refiner_names_both(models_dir):
    load, encode, sampler_node, _, _ = _nodes()
    _, b_text, _ = load.execute(BASE_FILE, "float32").args
    r_model, r_text, _ = load.execute(REFINER_FILE, "float32").args
    base_prompt = encode.execute(b_text, PROMPT, 1).args[0]
    refiner_prompt = encode.execute(r_text, "", 1).args[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(ValueError) as info:
        sampler_node.execute(r_model, base_prompt, refiner_prompt, latent, 1, 3, 5.0, "Euler", "normal", 1.0)
    message = str(info.value)
    assert "positive" in message and "SDXL refiner" in message and REFINER_FILE in message
    assert "TEXT_ENCODER" in message


def test_refiner_txt2img_is_allowed_with_a_warning(models_dir, caplog):
    load, encode, sampler_node, _, _ = _nodes()
    model, text_encoder, _ = load.execute(REFINER_FILE, "float32").args
    pos = encode.execute(text_encoder, PROMPT, 1).args[0]
    neg = encode.execute(text_encoder, "", 1).args[0]
    with caplog.at_level("WARNING"):
        out = sampler_node.execute(
            model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, 1, 3, 5.0, "Euler", "normal", 1.0
        ).args[0]
    assert torch.isfinite(out["samples"]).all()
    assert "pure noise" in caplog.text and "refiner" in caplog.text


@pytest.fixture(scope="module")
def controlnets(models_dir):
    import folder_paths

    from harness import models_controlnet as mc

    root = models_dir / "controlnet"
    if not root.is_dir():
        mc.write(models_dir, 0)
    folder_paths.add_model_folder_path("controlnet", str(root), is_default=True)
    folder_paths.filename_list_cache.clear()
    return mc


@pytest.mark.parametrize("which", ["SD15_CANNY", "SDXL_CANNY"])
def test_controlnet_on_the_refiner_is_refused(models_dir, controlnets, which):
    from diffusers_studio.nodes.controlnet import DSApplyControlNet, DSLoadControlNet
    from diffusers_studio.nodes.engine.controlnet import apply_controlnet

    load, encode, sampler_node, _, _ = _nodes()
    model, text_encoder, _ = load.execute(REFINER_FILE, "float32").args
    pos = encode.execute(text_encoder, PROMPT, 1).args[0]
    neg = encode.execute(text_encoder, "", 1).args[0]
    name = getattr(controlnets, which)
    control_net = DSLoadControlNet.execute(name, "float32").args[0]
    hint = torch.zeros(1, 64, 64, 3)
    with pytest.raises(ValueError) as info:
        DSApplyControlNet.execute(pos, neg, control_net, hint, 1.0)
    message = str(info.value)
    kind = "SD1.x" if which == "SD15_CANNY" else "SDXL"
    assert f"{kind} ControlNets do not apply to the SDXL refiner" in message
    assert "control_net" in message and name in message and "base model" in message

    # Attached to base-style conditioning and sampled with the refiner: refused when the run starts.
    _, b_text, _ = load.execute(BASE_FILE, "float32").args
    from dataclasses import replace

    disguised_pos, disguised_neg = apply_controlnet(
        replace(pos, variant="base"), replace(neg, variant="base"), control_net, hint
    )
    with pytest.raises(ValueError, match="do not apply to the SDXL refiner"):
        sampler_node.execute(
            model, replace(disguised_pos, variant="refiner"), replace(disguised_neg, variant="refiner"),
            {"samples": torch.zeros(1, 4, 8, 8)}, 1, 3, 5.0, "Euler", "normal", 1.0,
        )


def test_ip_adapter_on_the_refiner_is_refused(models_dir):
    import folder_paths

    from harness import models_ip_adapter as tiny_ip

    tiny_ip.write(models_dir, 0)
    from diffusers_studio.nodes import ip_adapter as nodes_ip

    folder_paths.add_model_folder_path("ipadapter", str(models_dir / "ipadapter"), is_default=True)
    folder_paths.add_model_folder_path("clip_vision", str(models_dir / "clip_vision"), is_default=True)
    folder_paths.filename_list_cache.clear()
    model, _, _ = _nodes()[0].execute(REFINER_FILE, "float32").args
    adapter = nodes_ip.DSLoadIPAdapter.execute(tiny_ip.SDXL_BASE, tiny_ip.VIT_BIGG, "float32").args[0]
    with pytest.raises(ValueError) as info:
        nodes_ip.DSApplyIPAdapter.execute(model, adapter, torch.rand(1, 32, 32, 3))
    message = str(info.value)
    assert "ip_adapter" in message and tiny_ip.SDXL_BASE in message and "SDXL refiner" in message
    assert "base model" in message


def test_a_checkpoint_that_is_neither_names_what_it_found(models_dir, tmp_path):
    """bigG as embedder 0 (the refiner's layout) with an SD1 UNet: neither base nor refiner."""
    import folder_paths
    import ldm_export
    import tiny_models

    from diffusers_studio.nodes.engine.loading import ModelLoadError

    sd1 = tiny_models.tiny_sd1_components(0)
    refiner = tiny_models.tiny_sdxl_refiner_components(0)
    tensors = {
        **ldm_export.unet_to_ldm(sd1["unet"]),
        **ldm_export.vae_to_ldm(sd1["vae"]),
        **ldm_export.open_clip_to_ldm(refiner["text_encoder_2"], ldm_export.REFINER_CLIP_G),
    }
    path = models_dir / "checkpoints" / "mixed-refiner.safetensors"
    ldm_export._save(tensors, path)
    folder_paths.filename_list_cache.clear()
    try:
        with pytest.raises(ModelLoadError) as info:
            _nodes()[0].execute("mixed-refiner.safetensors", "float32")
    finally:
        path.unlink()
        folder_paths.filename_list_cache.clear()
    message = str(info.value)
    assert "mixed-refiner.safetensors" in message and "SDXL refiner" in message
    assert "Supported" in message
