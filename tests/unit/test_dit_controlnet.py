"""Flux / SD3 ControlNets in the engine against diffusers' ControlNet pipelines.

Tiny components (tests/tiny_dit.py) saved as diffusers folders and loaded back
through load_checkpoint / load_controlnet; the reference pipelines are built
from the very same modules and called as their docs show, with a PIL control
image and a seeded generator. Float32, latents within 1e-4.

Random draws: FluxControlNetPipeline samples the hint's VAE posterior with the
generator before the starting noise; the engine draws it in the same place,
so the comparison is exact. StableDiffusion3ControlNetPipeline samples it with
torch's global RNG (no generator), which no seed can reproduce; the engine takes
the posterior mean, so the SD3 test gives the tiny VAE a negligible posterior
spread (log-variance at diffusers' clamp, std ~3e-7) so that both sides see the
same hint.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_dit
import tiny_models
from diffusers_studio.nodes.engine import controlnet_loading
from diffusers_studio.nodes.engine.controlnet import apply_controlnet
from diffusers_studio.nodes.engine.loading import load_checkpoint
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.text_encoding import encode_prompt

TOL = 1e-4
SIZE = 64


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ditcn")
    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(root / "flux-dev"), safe_serialization=True)
    sd3 = tiny_dit.sd3_pipeline(0)
    tiny_dit.narrow_posterior(sd3.vae)
    sd3.save_pretrained(str(root / "sd3"), safe_serialization=True)
    tiny_dit.tiny_flux_controlnet(1).save_pretrained(str(root / "cn-flux"))
    tiny_dit.tiny_flux_controlnet(2, num_mode=4).save_pretrained(str(root / "cn-flux-union"))
    tiny_dit.tiny_flux_controlnet(5).save_pretrained(str(root / "cn-flux-b"))
    tiny_dit.tiny_flux_controlnet(6, xlabs=True).save_pretrained(str(root / "cn-flux-xlabs"))
    tiny_dit.tiny_sd3_controlnet(3).save_pretrained(str(root / "cn-sd3"))
    tiny_dit.tiny_sd3_controlnet(4, force_zeros_for_pooled_projection=False).save_pretrained(str(root / "cn-sd3-pooled"))
    return root


def _load(folders, name):
    return load_checkpoint(folders / name, dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())


def _cn(folders, name):
    return controlnet_loading.load_controlnet(folders / name, dtype="float32", use_cache=False)


def _pipe(pipe_cls, bundles, controlnet):
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, text, vae = bundles
    parts = {"transformer": model.unet, "vae": vae.vae, "controlnet": controlnet,
             "scheduler": FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)}
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")]
    for (e, t), enc, tok in zip(names, text.text_encoders, text.tokenizers):
        parts[e], parts[t] = enc, tok
    pipe = pipe_cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _hint(seed=3):
    """A random picture on the 8-bit grid, so the PIL copy the pipeline gets is the same picture."""
    torch.manual_seed(seed)
    return (torch.rand(1, SIZE, SIZE, 3) * 255).round() / 255


def _pil(image):
    from PIL import Image

    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


def _empty():
    return {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}


def _flux_latents(pipe, latents, model):
    return pipe._unpack_latents(latents, SIZE, SIZE, 8) / model.latent_scaling_factor + model.latent_shift_factor


@pytest.mark.parametrize("name,mode", [("cn-flux", -1), ("cn-flux-union", 2), ("cn-flux-xlabs", -1)])
def test_flux_controlnet_matches_the_pipeline(folders, name, mode):
    from diffusers import FluxControlNetPipeline

    bundles = _load(folders, "flux-dev")
    model, text, vae = bundles
    cn = _cn(folders, name)
    hint = _hint()
    pos, neg = encode_prompt(text, "a cat"), encode_prompt(text, "")
    pos, neg = apply_controlnet(pos, neg, cn, hint, strength=0.8, start_percent=0.0, end_percent=0.75, vae=vae,
                                control_mode=mode)
    out = sample(model, pos, neg, _empty(), seed=7, steps=4, cfg=1.0, sampler_name="Euler")["samples"]
    pipe = _pipe(FluxControlNetPipeline, bundles, cn.module)
    kwargs = {"control_mode": mode} if mode >= 0 else {}
    latents = pipe(prompt="a cat", control_image=_pil(hint), controlnet_conditioning_scale=0.8,
                   control_guidance_start=0.0, control_guidance_end=0.75, num_inference_steps=4, guidance_scale=3.5,
                   height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(7), output_type="latent",
                   **kwargs).images
    expected = _flux_latents(pipe, latents, model)
    plain = sample(model, encode_prompt(text, "a cat"), None, _empty(), seed=7, steps=4, cfg=1.0,
                   sampler_name="Euler")["samples"]
    assert float((out - plain).abs().max()) > 1e-3  # the ControlNet changed the picture
    assert float((out - expected).abs().max()) <= TOL


def test_two_flux_controlnets_match_multicontrolnet(folders):
    """Chained units: both hints drawn in chain order before the noise, residuals summed (FluxMultiControlNetModel)."""
    from diffusers import FluxControlNetPipeline, FluxMultiControlNetModel

    bundles = _load(folders, "flux-dev")
    model, text, vae = bundles
    a, b = _cn(folders, "cn-flux"), _cn(folders, "cn-flux-b")
    ha, hb = _hint(3), _hint(4)
    pos, neg = encode_prompt(text, "a cat"), encode_prompt(text, "")
    pos, neg = apply_controlnet(pos, neg, a, ha, strength=0.7, vae=vae)
    pos, neg = apply_controlnet(pos, neg, b, hb, strength=0.5, start_percent=0.25, vae=vae)
    out = sample(model, pos, neg, _empty(), seed=2, steps=4, cfg=1.0, sampler_name="Euler")["samples"]
    pipe = _pipe(FluxControlNetPipeline, bundles, FluxMultiControlNetModel([a.module, b.module]))
    latents = pipe(prompt="a cat", control_image=[_pil(ha), _pil(hb)], controlnet_conditioning_scale=[0.7, 0.5],
                   control_guidance_start=[0.0, 0.25], control_guidance_end=[1.0, 1.0], num_inference_steps=4,
                   guidance_scale=3.5, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(2),
                   output_type="latent").images
    assert float((out - _flux_latents(pipe, latents, model)).abs().max()) <= TOL


@pytest.mark.parametrize("name", ["cn-sd3", "cn-sd3-pooled"])
def test_sd3_controlnet_matches_the_pipeline(folders, name):
    from diffusers import StableDiffusion3ControlNetPipeline

    bundles = _load(folders, "sd3")
    model, text, vae = bundles
    cn = _cn(folders, name)
    hint = _hint()
    pos, neg = encode_prompt(text, "a cat"), encode_prompt(text, "blurry")
    pos, neg = apply_controlnet(pos, neg, cn, hint, strength=0.9, start_percent=0.25, vae=vae)
    out = sample(model, pos, neg, _empty(), seed=5, steps=4, cfg=4.0, sampler_name="Euler")["samples"]
    pipe = _pipe(StableDiffusion3ControlNetPipeline, bundles, cn.module)
    latents = pipe(prompt="a cat", negative_prompt="blurry", control_image=_pil(hint),
                   controlnet_conditioning_scale=0.9, control_guidance_start=0.25, num_inference_steps=4,
                   guidance_scale=4.0, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(5),
                   output_type="latent").images
    expected = latents / model.latent_scaling_factor + model.latent_shift_factor
    assert float((out - expected).abs().max()) <= TOL


def test_wrong_family_refused_naming_both(folders):
    _, flux_text, flux_vae = _load(folders, "flux-dev")
    sd3_model, sd3_text, sd3_vae = _load(folders, "sd3")
    hint = _hint()
    sd3_pos = encode_prompt(sd3_text, "a cat")
    with pytest.raises(ValueError, match=r"Flux\.1 ControlNet.*SD3"):
        apply_controlnet(sd3_pos, None, _cn(folders, "cn-flux"), hint, vae=sd3_vae)
    sd1 = controlnet_loading.ControlNetBundle("sd1", "cn-sd15", torch.nn.Identity(), torch.float32)
    with pytest.raises(ValueError, match=r"SD1\.x ControlNet.*SD3"):
        apply_controlnet(sd3_pos, None, sd1, hint)


def test_missing_vae_and_bad_control_mode_refused(folders):
    _, text, vae = _load(folders, "flux-dev")
    pos = encode_prompt(text, "a cat")
    with pytest.raises(ValueError, match="vae: none connected.*Load Diffusers Model"):
        apply_controlnet(pos, None, _cn(folders, "cn-flux"), _hint())
    with pytest.raises(ValueError, match="control_mode is 3.*not a Union"):
        apply_controlnet(pos, None, _cn(folders, "cn-flux"), _hint(), vae=vae, control_mode=3)
    with pytest.raises(ValueError, match="control_mode is -1.*Union ControlNet with 4 modes"):
        apply_controlnet(pos, None, _cn(folders, "cn-flux-union"), _hint(), vae=vae)


def test_folder_detection(folders):
    assert controlnet_loading.is_controlnet_folder(str(folders / "cn-flux"))
    assert controlnet_loading.is_controlnet_folder(str(folders / "cn-sd3"))
    assert not controlnet_loading.is_controlnet_folder(str(folders / "flux-dev"))
    assert _cn(folders, "cn-sd3").family == "sd3" and _cn(folders, "cn-flux").family == "flux"


def test_mask_limits_the_controlnet(folders):
    """An all-white mask is no limit (the same result); a half mask gives a result between none and full."""
    model, text, vae = _load(folders, "flux-dev")
    cn, hint = _cn(folders, "cn-flux"), _hint()

    def run(mask):
        pos = encode_prompt(text, "a cat")
        if mask is not False:
            pos, _ = apply_controlnet(pos, None, cn, hint, vae=vae, mask=mask)
        return sample(model, pos, None, _empty(), seed=1, steps=2, cfg=1.0, sampler_name="Euler")["samples"]

    full, plain = run(None), run(False)
    assert torch.equal(run(torch.ones(SIZE, SIZE)), full)
    half = torch.zeros(1, SIZE, SIZE)
    half[:, :, : SIZE // 2] = 1.0
    masked = run(half)
    assert not torch.allclose(masked, full) and not torch.allclose(masked, plain)
