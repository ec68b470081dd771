"""SD3 / SD3.5 IP-Adapter (InstantX layout) against StableDiffusion3Pipeline + load_ip_adapter, and its contract.

A tiny adapter is written in InstantX's layout (tests/harness/
models_ip_adapter.py: the nested ip-adapter.bin InstantX publishes, and the
same keys as .safetensors) into a folder that diffusers reads with
`load_ip_adapter(folder, weight_name=...)`; the same file goes through the
pack's loader and the SD3 hook. The pipeline gets a tiny SigLIP vision model
as its `image_encoder`, a SiglipImageProcessor as its `feature_extractor` and
a PIL `ip_adapter_image`; same seed, steps and scale give the same latents
to 1e-4 (float32), with CFG (whose negative rows see zeros, as the pipeline)
and without. The reference runs on a copy of the transformer: load_ip_adapter
rewrites it.
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
from diffusers_studio.nodes.engine.image_encoder import SIGLIP, load_image_encoder
from diffusers_studio.nodes.engine.ip_adapter import apply_ip_adapter
from diffusers_studio.nodes.engine.ip_adapter_loading import SD3, IPAdapterLoadError, load_ip_adapter
from diffusers_studio.nodes.engine.loading import load_checkpoint
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.text_encoding import encode_prompt
from harness import models_ip_adapter as tiny_ip

TOL = 1e-4
SIZE = 64
STEPS = 3
BIN = "ip-adapter.bin"


def _picture(seed=3) -> Image.Image:
    """A reference picture of another size than the run (the processor resizes it)."""
    return pil_inputs.picture(seed, size=48)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3_ip")
    tiny_dit.sd3_pipeline(0).save_pretrained(str(root / "sd3"), safe_serialization=True)
    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(root / "flux-dev"), safe_serialization=True)
    bundles = load_checkpoint(root / "sd3", dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())
    adapters = root / "ipadapter"
    state = tiny_ip.sd3_adapter_state_dict(bundles[0].unet, seed=1)
    tiny_ip.save_adapter_bin(state, adapters / BIN)
    tiny_ip.save_adapter(state, adapters / tiny_ip.SD3_IP)
    tiny_ip.save_adapter(tiny_ip.sd3_adapter_state_dict(bundles[0].unet, seed=2), adapters / "sd3-b.safetensors")
    flux_transformer = tiny_dit.tiny_flux_components(0)["transformer"]
    vit_l = tiny_ip.ENCODER_SHAPES[tiny_ip.VIT_L]["projection_dim"]
    tiny_ip.save_adapter(tiny_ip.flux_adapter_state_dict(flux_transformer, vit_l, 3), adapters / tiny_ip.FLUX_IP)
    sd1_unet = tiny_models.tiny_sd1_components(0)["unet"]
    h_proj = tiny_ip.ENCODER_SHAPES[tiny_ip.VIT_H]["projection_dim"]
    tiny_ip.save_adapter(tiny_ip.adapter_state_dict(sd1_unet, "base", h_proj, 5), adapters / "sd1-base.safetensors")
    siglip = tiny_ip.tiny_siglip_encoder(0)
    siglip.save_pretrained(str(root / "siglip-folder"))
    encoders = {
        "siglip": tiny_ip.save_siglip_single_file(siglip, root / tiny_ip.SIGLIP),
        "siglip-folder": root / "siglip-folder",
        "vit-l": tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_L, 0), root / tiny_ip.VIT_L),
        "vit-h": tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_H, 0), root / tiny_ip.VIT_H),
    }
    return {"root": root, "adapters": adapters, "encoders": encoders, "bundles": bundles}


def _adapter(setup, name=BIN, encoder="siglip"):
    return load_ip_adapter(str(setup["adapters"] / name), load_image_encoder(str(setup["encoders"][encoder])),
                           name=name)


def _ours(setup, model, prompt="a cat", negative="", cfg=1.0, seed=7):
    return ip_contract.sample_16ch(setup["bundles"][1], model, SIZE, STEPS, prompt, negative, cfg, seed)


def _reference(setup, weight_name, scale, image, prompt="a cat", seed=7, cfg=1.0, negative_image=None, **call):
    """StableDiffusion3Pipeline on a copy of the transformer, with load_ip_adapter and the tiny SigLIP.

    negative_image: the pipeline has no negative_ip_adapter_image; its documented way is
    ip_adapter_image_embeds = [negative, positive] from its own encode_image.
    """
    from diffusers import StableDiffusion3Pipeline

    model, text, vae = setup["bundles"]
    copied = copy.copy(model)
    object.__setattr__(copied, "unet", copy.deepcopy(model.unet))
    pipe = tiny_dit.pipeline_of(StableDiffusion3Pipeline, (copied, text, vae))
    pipe.register_modules(image_encoder=tiny_ip.tiny_siglip_encoder(0), feature_extractor=tiny_ip.siglip_processor())
    pipe.load_ip_adapter(str(setup["adapters"]), weight_name=weight_name, local_files_only=True)
    pipe.set_ip_adapter_scale(scale)
    if negative_image is None:
        call["ip_adapter_image"] = image
    else:
        encoded = [pipe.encode_image(picture, torch.device("cpu")) for picture in (negative_image, image)]
        call["ip_adapter_image_embeds"] = torch.cat(encoded)
    latents = pipe(prompt=prompt, num_inference_steps=STEPS, guidance_scale=cfg,
                   height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(seed), output_type="latent",
                   **call).images
    return latents / model.latent_scaling_factor + model.latent_shift_factor


# ------------------------------------------------------------------ reading
def test_loader_reads_the_instantx_layout(setup):
    adapter = _adapter(setup)
    assert adapter.target == SD3 and adapter.variant == "time-resampler"
    assert adapter.encoder.arch == SIGLIP
    assert adapter.weights.num_layers == len(setup["bundles"][0].unet.attn_processors)
    same = _adapter(setup, tiny_ip.SD3_IP)  # the .safetensors of the same keys
    for a, b in zip(adapter.weights.state_dict().values(), same.weights.state_dict().values()):
        assert torch.equal(a, b)


def test_siglip_folder_and_single_file_encode_alike(setup):
    from diffusers_studio.nodes.engine.image_encoder import HIDDEN_STATES, encode_images

    image = pil_inputs.as_image(_picture())
    single = load_image_encoder(str(setup["encoders"]["siglip"]))
    folder = load_image_encoder(str(setup["encoders"]["siglip-folder"]))
    assert single.arch == folder.arch == SIGLIP and single.num_positions == 16
    a = encode_images(single, image, HIDDEN_STATES, zero_negative=True)
    b = encode_images(folder, image, HIDDEN_STATES, zero_negative=True)
    assert torch.equal(a.positive, b.positive) and not a.negative.any()


# ------------------------------------------------------------------ parity
def test_matches_sd3_pipeline_load_ip_adapter(setup):
    picture = _picture()
    model = setup["bundles"][0]
    plain = _ours(setup, model)
    ours = _ours(setup, apply_ip_adapter(model, _adapter(setup), images=pil_inputs.as_image(picture), weight=0.7))
    ref = _reference(setup, BIN, 0.7, picture)
    assert _diff(ours, ref) <= TOL
    assert _diff(ours, plain) > 1e-3, "the adapter had no visible effect"


def test_cfg_negative_rows_see_zeros_like_the_pipeline(setup):
    picture = _picture(4)
    model = apply_ip_adapter(setup["bundles"][0], _adapter(setup, tiny_ip.SD3_IP), images=pil_inputs.as_image(picture),
                             weight=0.8)
    ours = _ours(setup, model, "a castle", "fog", cfg=4.0, seed=3)
    ref = _reference(setup, tiny_ip.SD3_IP, 0.8, picture, prompt="a castle", seed=3, cfg=4.0, negative_prompt="fog")
    assert _diff(ours, ref) <= TOL


def test_two_reference_pictures_are_one_sequence_like_the_pipeline(setup):
    """A list of pictures: the pipeline's resampler output viewed per batch row (it works without CFG only)."""
    a, b = _picture(8), _picture(9)
    images = torch.cat([pil_inputs.as_image(a), pil_inputs.as_image(b)])
    ours = _ours(setup, apply_ip_adapter(setup["bundles"][0], _adapter(setup), images=images, weight=0.6))
    assert _diff(ours, _reference(setup, BIN, 0.6, [a, b])) <= TOL


def test_negative_image_matches_the_pipeline_given_both_embeds(setup):
    picture, negative = _picture(4), _picture(11)
    model = apply_ip_adapter(setup["bundles"][0], _adapter(setup), images=pil_inputs.as_image(picture), weight=0.9,
                             negative_images=pil_inputs.as_image(negative))
    ours = _ours(setup, model, "a castle", "fog", cfg=3.0, seed=5)
    ref = _reference(setup, BIN, 0.9, picture, prompt="a castle", seed=5, cfg=3.0, negative_prompt="fog",
                     negative_image=negative)
    assert _diff(ours, ref) <= TOL
    default = _ours(setup, apply_ip_adapter(setup["bundles"][0], _adapter(setup), images=pil_inputs.as_image(picture),
                                            weight=0.9), "a castle", "fog", cfg=3.0, seed=5)
    assert _diff(ours, default) > 1e-4


# ------------------------------------------------------------------ contract
def test_run_leaves_the_transformer_as_it_was(setup):
    ip_contract.check_run_restores(lambda m: _ours(setup, m), setup["bundles"][0], _adapter(setup),
                                   pil_inputs.as_image(_picture()))


def test_projections_are_computed_once_and_the_hooks_leave_with_the_run(setup):
    """The adapter's second attention reuses the q/k/v the layer computed (as diffusers' processor does):
    a run with it calls each projection as often as a run without it, and leaves no hook behind."""
    model = setup["bundles"][0]
    projections = [m for name, m in model.unet.named_modules() if name.endswith((".to_q", ".to_k", ".to_v"))]
    hooks_before = [dict(m._forward_hooks) for m in projections]
    calls = []
    counters = [m.register_forward_hook(lambda *_a: calls.append(1)) for m in projections]
    try:
        _ours(setup, model)
        plain = len(calls)
        calls.clear()
        _ours(setup, apply_ip_adapter(model, _adapter(setup), images=pil_inputs.as_image(_picture()), weight=0.7))
        assert len(calls) == plain > 0
    finally:
        for handle in counters:
            handle.remove()
    assert [dict(m._forward_hooks) for m in projections] == hooks_before


def test_cancel_restores_the_transformer(setup):
    model = setup["bundles"][0]
    before = dict(model.unet.attn_processors)
    patched = apply_ip_adapter(model, _adapter(setup), images=pil_inputs.as_image(_picture()), weight=1.0)
    _, text, _ = setup["bundles"]
    calls = []

    def stop():
        calls.append(1)
        if len(calls) == 2:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        sample(patched, encode_prompt(text, "a cat"), None, {"samples": torch.zeros(1, 16, 8, 8)}, seed=1,
               steps=STEPS, cfg=1.0, sampler_name="Euler", should_stop=stop)
    assert all(model.unet.attn_processors[name] is proc for name, proc in before.items())
    assert not any(m._forward_hooks for name, m in model.unet.named_modules() if name.endswith(".to_q"))


def test_stacked_adapters_add_up(setup):
    """Two copies at 0.4 and 0.3 act as one at 0.7 (the IP term is linear in the scale); two files stack."""
    model, image = setup["bundles"][0], pil_inputs.as_image(_picture(6))
    adapter = _adapter(setup)
    one = _ours(setup, apply_ip_adapter(model, adapter, images=image, weight=0.7))
    two = apply_ip_adapter(apply_ip_adapter(model, adapter, images=image, weight=0.4), adapter, images=image,
                           weight=0.3)
    assert _diff(_ours(setup, two), one) <= TOL
    other = apply_ip_adapter(two, _adapter(setup, "sd3-b.safetensors"), images=pil_inputs.as_image(_picture(7)),
                             weight=0.5)
    assert _diff(_ours(setup, other), one) > 1e-4


def test_step_window_and_mask(setup):
    ip_contract.check_window_and_mask(lambda m: _ours(setup, m), setup["bundles"][0], _adapter(setup),
                                      pil_inputs.as_image(_picture(5)), SIZE)


def test_wrong_family_files_are_refused_naming_both(setup):
    sd3_model = setup["bundles"][0]
    flux_adapter = _adapter(setup, tiny_ip.FLUX_IP, "vit-l")
    with pytest.raises(ValueError, match=r"flux-ip-adapter.safetensors.*Flux.1 IP-Adapter.*Stable Diffusion 3"):
        apply_ip_adapter(sd3_model, flux_adapter, images=pil_inputs.as_image(_picture()))
    sd1_adapter = _adapter(setup, "sd1-base.safetensors", "vit-h")
    with pytest.raises(ValueError, match=r"sd1-base.safetensors.*SD1.x/SDXL IP-Adapter.*Stable Diffusion 3.*InstantX"):
        apply_ip_adapter(sd3_model, sd1_adapter, images=pil_inputs.as_image(_picture()))
    flux_model = load_checkpoint(setup["root"] / "flux-dev", dtype="float32",
                                 tokenizer_dir=tiny_models.tokenizer_dir())[0]
    with pytest.raises(ValueError, match=r"'ip-adapter.bin' is an SD3.5 IP-Adapter.*Flux.1 dev"):
        apply_ip_adapter(flux_model, _adapter(setup), images=pil_inputs.as_image(_picture()))
    from diffusers_studio.nodes.engine.components import ModelBundle

    pipe = tiny_models.sd1_pipeline()
    sd1_model = ModelBundle("sd1", "tiny-sd1", pipe.unet, dict(pipe.scheduler.config), torch.float32)
    with pytest.raises(ValueError, match=r"'ip-adapter.bin' is an SD3.5 IP-Adapter.*tiny-sd1.*Stable Diffusion 1"):
        apply_ip_adapter(sd1_model, _adapter(setup), images=pil_inputs.as_image(_picture()))


def test_encoder_of_the_other_kind_is_refused(setup):
    with pytest.raises(IPAdapterLoadError, match=r"clip_vision.*CLIP vision model.*SD3.5 IP-Adapter.*siglip"):
        _adapter(setup, BIN, "vit-l")
    with pytest.raises(IPAdapterLoadError, match=r"clip_vision.*SigLIP vision model.*Flux.1 IP-Adapter|SigLIP.*CLIP"):
        _adapter(setup, tiny_ip.FLUX_IP, "siglip")


def test_adapter_for_another_transformer_is_refused(setup, tmp_path):
    from diffusers import SD3Transformer2DModel

    deeper = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=16, out_channels=16, num_layers=3,
                                   attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                   joint_attention_dim=96, pooled_projection_dim=64)
    path = tiny_ip.save_adapter(tiny_ip.sd3_adapter_state_dict(deeper, seed=4), tmp_path / "for-large.safetensors")
    adapter = load_ip_adapter(str(path), load_image_encoder(str(setup["encoders"]["siglip"])))
    with pytest.raises(ValueError, match=r"'for-large.safetensors' was made for an SD3 transformer with 3 .*2 layers"):
        apply_ip_adapter(setup["bundles"][0], adapter, images=pil_inputs.as_image(_picture()))
    with pytest.raises(ValueError, match="weight_mode.*standard"):
        apply_ip_adapter(setup["bundles"][0], _adapter(setup), images=pil_inputs.as_image(_picture()),
                         weight_mode="style")
