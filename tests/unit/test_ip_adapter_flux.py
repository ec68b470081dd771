"""Flux.1 IP-Adapter (XLabs layout) against FluxPipeline + load_ip_adapter, and its contract.

A tiny adapter is written in XLabs' key layout (tests/harness/
models_ip_adapter.py) into a folder that diffusers reads with
`load_ip_adapter(folder, weight_name=...)`; the same file goes through the
pack's loader and the Flux hook. The pipeline gets the tiny CLIP vision
encoder as its `image_encoder` and a PIL `ip_adapter_image`; same seed,
steps and scale give the same latents to 1e-4 (float32), with and without
true CFG (whose negative rows see the encoded black picture FluxPipeline
uses as its default negative image), and for two stacked adapters.
The reference runs on a copy of the transformer: load_ip_adapter rewrites it.
"""
from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

import ip_adapter_contract as ip_contract
from ip_adapter_contract import max_diff as _diff
import pil_inputs
import tiny_dit
import tiny_models
from diffusers_studio.nodes.engine.image_encoder import load_image_encoder
from diffusers_studio.nodes.engine.ip_adapter import apply_ip_adapter
from diffusers_studio.nodes.engine.ip_adapter_loading import FLUX, load_ip_adapter
from diffusers_studio.nodes.engine.loading import load_checkpoint
from harness import models_ip_adapter as tiny_ip

TOL = 1e-4
SIZE = 64
STEPS = 3


def _picture(seed=3) -> Image.Image:
    return pil_inputs.picture(seed, size=48)


def _image_tensor(picture: Image.Image) -> torch.Tensor:
    return pil_inputs.as_image(picture)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux_ip")
    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(root / "flux-dev"), safe_serialization=True)
    tiny_dit.sd3_pipeline(0).save_pretrained(str(root / "sd3"), safe_serialization=True)
    bundles = load_checkpoint(root / "flux-dev", dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())
    transformer = bundles[0].unet
    embed = tiny_ip.ENCODER_SHAPES[tiny_ip.VIT_L]["projection_dim"]
    adapters = root / "ipadapter"
    for name, seed in (("flux-a.safetensors", 1), ("flux-b.safetensors", 2)):
        tiny_ip.save_adapter(tiny_ip.flux_adapter_state_dict(transformer, embed, seed), adapters / name)
    sd1_unet = tiny_models.tiny_sd1_components(0)["unet"]
    h_proj = tiny_ip.ENCODER_SHAPES[tiny_ip.VIT_H]["projection_dim"]
    tiny_ip.save_adapter(tiny_ip.adapter_state_dict(sd1_unet, "base", h_proj, 5), adapters / "sd1-base.safetensors")
    encoders = {
        "vit-l": tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_L, 0), root / tiny_ip.VIT_L),
        "vit-h": tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_H, 0), root / tiny_ip.VIT_H),
    }
    return {"root": root, "adapters": adapters, "encoders": encoders, "bundles": bundles}


def _adapter(setup, name="flux-a.safetensors", encoder="vit-l"):
    return load_ip_adapter(str(setup["adapters"] / name), load_image_encoder(str(setup["encoders"][encoder])),
                           name=name)


def _ours(setup, model, prompt="a cat", negative="", cfg=1.0, seed=7):
    return ip_contract.sample_16ch(setup["bundles"][1], model, SIZE, STEPS, prompt, negative, cfg, seed)


def _reference(setup, weight_names, scale, images, prompt="a cat", seed=7, **call):
    """FluxPipeline on a copy of the transformer, with load_ip_adapter and the tiny image encoder."""
    from diffusers import FluxPipeline

    model, text, vae = setup["bundles"]
    copied = copy.copy(model)
    object.__setattr__(copied, "unet", copy.deepcopy(model.unet))
    pipe = tiny_dit.pipeline_of(FluxPipeline, (copied, text, vae))
    pipe.register_modules(image_encoder=tiny_ip.tiny_image_encoder(tiny_ip.VIT_L, 0))
    pipe.load_ip_adapter(str(setup["adapters"]), weight_name=weight_names, local_files_only=True)
    pipe.set_ip_adapter_scale(scale)
    latents = pipe(prompt=prompt, ip_adapter_image=images, num_inference_steps=STEPS, guidance_scale=3.5,
                   height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(seed), output_type="latent",
                   **call).images
    latents = pipe._unpack_latents(latents, SIZE, SIZE, 8)
    return latents / model.latent_scaling_factor + model.latent_shift_factor


# ------------------------------------------------------------------ parity
def test_loader_reads_the_xlabs_layout(setup):
    adapter = _adapter(setup)
    assert adapter.target == FLUX and adapter.variant == "base"
    assert adapter.weights.num_layers == len(setup["bundles"][0].unet.transformer_blocks)
    assert len(adapter.weights.to_k_ip_bias) == adapter.weights.num_layers


def test_matches_flux_pipeline_load_ip_adapter(setup):
    picture = _picture()
    model = setup["bundles"][0]
    plain = _ours(setup, model)
    ours = _ours(setup, apply_ip_adapter(model, _adapter(setup), images=_image_tensor(picture), weight=0.7))
    ref = _reference(setup, "flux-a.safetensors", 0.7, picture)
    assert _diff(ours, ref) <= TOL
    assert _diff(ours, plain) > 1e-3, "the adapter had no visible effect"


def test_true_cfg_negative_is_the_black_picture_like_the_pipeline(setup):
    picture = _picture(4)
    model = apply_ip_adapter(setup["bundles"][0], _adapter(setup), images=_image_tensor(picture), weight=0.8)
    ours = _ours(setup, model, "a castle", "fog", cfg=2.5, seed=3)
    ref = _reference(setup, "flux-a.safetensors", 0.8, picture, prompt="a castle", seed=3,
                     negative_prompt="fog", true_cfg_scale=2.5)
    assert _diff(ours, ref) <= TOL


def test_two_adapters_stack_like_diffusers(setup):
    a, b = _picture(8), _picture(9)
    model = apply_ip_adapter(setup["bundles"][0], _adapter(setup), images=_image_tensor(a), weight=0.6)
    model = apply_ip_adapter(model, _adapter(setup, "flux-b.safetensors"), images=_image_tensor(b), weight=0.5)
    ref = _reference(setup, ["flux-a.safetensors", "flux-b.safetensors"], [0.6, 0.5], [a, b])
    assert _diff(_ours(setup, model), ref) <= TOL


# ------------------------------------------------------------------ contract
def test_run_leaves_the_transformer_as_it_was(setup):
    ip_contract.check_run_restores(lambda m: _ours(setup, m), setup["bundles"][0], _adapter(setup),
                                   _image_tensor(_picture()))


def test_step_window_and_mask(setup):
    ip_contract.check_window_and_mask(lambda m: _ours(setup, m), setup["bundles"][0], _adapter(setup),
                                      _image_tensor(_picture(5)), SIZE)


def test_wrong_family_files_are_refused_naming_both(setup):
    flux_model = setup["bundles"][0]
    sd1_adapter = _adapter(setup, "sd1-base.safetensors", "vit-h")
    with pytest.raises(ValueError, match=r"sd1-base.safetensors.*SD1.x/SDXL IP-Adapter.*Flux.1 dev"):
        apply_ip_adapter(flux_model, sd1_adapter, images=_image_tensor(_picture()))
    from diffusers_studio.nodes.engine.components import ModelBundle

    pipe = tiny_models.sd1_pipeline()
    sd1_model = ModelBundle("sd1", "tiny-sd1", pipe.unet, dict(pipe.scheduler.config), torch.float32)
    with pytest.raises(ValueError, match=r"flux-a.safetensors.*Flux.1 IP-Adapter.*tiny-sd1.*Stable Diffusion 1"):
        apply_ip_adapter(sd1_model, _adapter(setup), images=_image_tensor(_picture()))
    sd3_model = load_checkpoint(setup["root"] / "sd3", dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())[0]
    with pytest.raises(ValueError, match=r"flux-a.safetensors.*Flux.1 IP-Adapter.*Stable Diffusion 3"):
        apply_ip_adapter(sd3_model, _adapter(setup), images=_image_tensor(_picture()))


def test_flux_adapter_refuses_sdxl_weight_modes(setup):
    with pytest.raises(ValueError, match="weight_mode.*standard"):
        apply_ip_adapter(setup["bundles"][0], _adapter(setup), images=_image_tensor(_picture()), weight_mode="style")
