"""FLUX.1 / SD3 from single and split files through the nodes, against the diffusers folder and pipeline.

The same tiny weights are written three ways: a diffusers folder
(models/diffusers), the split files BFL / Stability publish (BFL-layout
transformer in models/diffusion_models, clip_l and t5xxl in
models/text_encoders, ae in models/vae) and a ComfyUI all-in-one checkpoint
(models/checkpoints). DSLoadSplitModel / DSLoadModel -> DSTextEncode ->
DSSampler -> DSVAEDecode on the files must give the images the same graph
gives on the folder, and FluxPipeline / StableDiffusion3Pipeline called with
prompt strings on the loaded components. Float32, <= 1e-4.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dit_export
import dit_tiny
import ldm_export

TOL = 1e-4
SIZE = 64  # pixels: an 8x8 latent (the tiny VAE has 4 latent channels)


@pytest.fixture(scope="module")
def dit_files(models_dir):
    import folder_paths
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    flux = dit_tiny.tiny_flux_components("dev")
    sd3 = dit_tiny.tiny_sd3_components("sd35_medium")
    dirs = {name: models_dir / name for name in ("diffusion_models", "text_encoders", "vae", "checkpoints", "diffusers")}
    for folder in dirs.values():
        folder.mkdir(exist_ok=True)
    ldm_export.save_diffusers_folder(FluxPipeline(**flux), dirs["diffusers"] / "file-flux-dev")
    ldm_export.save_diffusers_folder(StableDiffusion3Pipeline(**sd3), dirs["diffusers"] / "file-sd35-medium")
    dit_export.save_transformer(flux["transformer"], dirs["diffusion_models"] / "flux1-dev-tiny.safetensors")
    dit_export.save_clip(flux["text_encoder"], dirs["text_encoders"] / "clip_l-tiny.safetensors")
    dit_export.save_t5(flux["text_encoder_2"], dirs["text_encoders"] / "t5xxl-tiny.safetensors")
    dit_export.save_clip(sd3["text_encoder_2"], dirs["text_encoders"] / "clip_g-tiny.safetensors")
    dit_export.save_ae(flux["vae"], dirs["vae"] / "ae-tiny.safetensors")
    dit_export.save_all_in_one(flux, dirs["checkpoints"] / "flux1-dev-tiny-aio.safetensors")
    dit_export.save_all_in_one(sd3, dirs["checkpoints"] / "sd35-medium-tiny-aio.safetensors")
    for name in ("diffusion_models", "text_encoders", "vae"):
        folder_paths.add_model_folder_path(name, str(dirs[name]), is_default=True)
    folder_paths.filename_list_cache.clear()
    return dirs


def _nodes():
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.flux_guidance import DSFluxGuidance
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.split_loader import DSLoadSplitModel
    from diffusers_studio.nodes.vae import DSVAEDecode

    return DSLoadModel, DSLoadSplitModel, DSTextEncode, DSSampler, DSVAEDecode, DSFluxGuidance


def _split(transformer, encoders, vae):
    _, split, *_ = _nodes()
    names = dict(zip(("text_encoder_1", "text_encoder_2", "text_encoder_3"), encoders))
    assert split.validate_inputs(transformer_name=transformer, vae_name=vae, dtype="float32", **names) is True
    return split.execute(transformer_name=transformer, vae_name=vae, dtype="float32", **names).args


def _checkpoint(name):
    return _nodes()[0].execute(name, "float32").args


def _graph(bundles, prompt, negative, *, seed, steps, cfg, guidance=None):
    _, _, encode, sampler, decode, flux_guidance = _nodes()
    model, text_encoder, vae = bundles
    positive = encode.execute(text_encoder, prompt, 1, 0, False, 0).args[0]
    negative_c = encode.execute(text_encoder, negative, 1, 0, False, 0).args[0]
    if guidance is not None:
        positive = flux_guidance.execute(positive, guidance).args[0]
    latent = {"samples": torch.zeros(1, dit_tiny.LATENT, SIZE // 8, SIZE // 8)}
    out = sampler.execute(model, positive, negative_c, latent, seed, steps, cfg, "Euler", "normal", 1.0).args[0]
    return decode.execute(vae, out).args[0].numpy()


def _pipeline(pipe_cls, bundles):
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, text_encoder, vae = bundles
    parts = {"transformer": model.unet, "vae": vae.vae,
             "scheduler": FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)}
    slots = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")]
    for (enc, tok), encoder, tokenizer in zip(slots, text_encoder.text_encoders, text_encoder.tokenizers):
        parts[enc], parts[tok] = encoder, tokenizer
    if model.family == "flux":
        parts.update(image_encoder=None, feature_extractor=None)
    pipe = pipe_cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _close(a, b):
    assert a.shape == b.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(a - b).max())
    assert diff <= TOL, f"max abs difference {diff}"


def _same_bundles(files, folder):
    """Family, variant, scaling and shift factors, scheduler: as the folder route builds them."""
    for got, want in zip(files, folder):
        assert (got.family, got.variant) == (want.family, want.variant)
    assert files[0].latent_scaling_factor == folder[0].latent_scaling_factor
    assert files[0].latent_shift_factor == folder[0].latent_shift_factor
    assert files[0].vae_scale_factor == folder[0].vae_scale_factor
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert strip(files[0].scheduler_config) == strip(folder[0].scheduler_config)
    assert len(files[1].text_encoders) == len(folder[1].text_encoders)


@pytest.mark.parametrize("route", ["split", "all-in-one"])
def test_flux_files_match_the_diffusers_folder_and_pipeline(dit_files, route):
    from diffusers import FluxPipeline

    if route == "split":
        files = _split("flux1-dev-tiny.safetensors", ["t5xxl-tiny.safetensors", "clip_l-tiny.safetensors"],
                       "ae-tiny.safetensors")
    else:
        files = _checkpoint("flux1-dev-tiny-aio.safetensors")
    folder = _checkpoint("file-flux-dev")
    _same_bundles(files, folder)
    assert files[0].variant == "dev"
    kwargs = dict(seed=7, steps=3, cfg=1.0, guidance=4.0)
    images = _graph(files, "a photo of a cat", "", **kwargs)
    _close(images, _graph(folder, "a photo of a cat", "", **kwargs))
    expected = _pipeline(FluxPipeline, files)(
        prompt="a photo of a cat", num_inference_steps=3, guidance_scale=4.0, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(7), output_type="np",
    ).images
    _close(images, expected)


def test_sd3_all_in_one_matches_the_diffusers_folder_and_pipeline(dit_files):
    from diffusers import StableDiffusion3Pipeline

    files = _checkpoint("sd35-medium-tiny-aio.safetensors")
    folder = _checkpoint("file-sd35-medium")
    _same_bundles(files, folder)
    assert len(files[1].text_encoders) == 3
    kwargs = dict(seed=42, steps=3, cfg=5.0)
    images = _graph(files, "a photo of a cat", "blurry", **kwargs)
    _close(images, _graph(folder, "a photo of a cat", "blurry", **kwargs))
    expected = _pipeline(StableDiffusion3Pipeline, files)(
        prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.0,
        height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(42), output_type="np",
    ).images
    _close(images, expected)


def test_wrong_combination_is_refused_by_the_node_with_the_file_and_fix(dit_files):
    _, split, *_ = _nodes()
    inputs = dict(transformer_name="flux1-dev-tiny.safetensors", text_encoder_1="clip_l-tiny.safetensors",
                  text_encoder_2="clip_g-tiny.safetensors", text_encoder_3="t5xxl-tiny.safetensors",
                  vae_name="ae-tiny.safetensors", dtype="float32")
    message = split.validate_inputs(**inputs)
    assert isinstance(message, str)
    assert "clip_g-tiny.safetensors" in message and "Remove clip_g" in message
    with pytest.raises(ValueError, match="clip_g-tiny.safetensors"):
        split.execute(**inputs)

    inputs.update(text_encoder_2="none", text_encoder_3="none")
    message = split.validate_inputs(**inputs)
    assert "T5-XXL" in message and "t5xxl_fp16.safetensors" in message

    # An SD1 checkpoint is no transformer, and an unknown name names the widget.
    message = split.validate_inputs(**{**inputs, "transformer_name": "missing.safetensors"})
    assert message.startswith("transformer_name: 'missing.safetensors'")
    message = split.validate_inputs(**{**inputs, "text_encoder_3": "nope.safetensors"})
    assert message.startswith("text_encoder_3: 'nope.safetensors'")


def test_sd1_checkpoints_keep_their_path(dit_files):
    """The header check sends SD1/SDXL files down their old path: the same modules and classes."""
    model, text_encoder, _ = _checkpoint("tiny-sd15.safetensors")
    assert model.family == "sd1" and type(model.unet).__name__ == "UNet2DConditionModel"
    assert len(text_encoder.text_encoders) == 1
