"""Flux.1 IP-Adapter through the node graph against FluxPipeline + load_ip_adapter.

DSLoadModel -> DSTextEncode -> DSLoadIPAdapter (an XLabs-layout file in
models/ipadapter, CLIP ViT-L/14 in models/clip_vision) -> DSApplyIPAdapter ->
DSSampler -> DSVAEDecode, run as ComfyUI calls them; the reference is
FluxPipeline built from the same loaded modules (the transformer copied:
load_ip_adapter rewrites it), `load_ip_adapter(folder, weight_name=...)` on
the same file, the same tiny encoder as its image_encoder, and a PIL
`ip_adapter_image` (and `negative_ip_adapter_image`). Float32, decoded
images within 1e-4.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import ldm_export
import tiny_dit
from harness import models_ip_adapter as tiny_ip

TOL = 1e-4
SIZE = 64


@pytest.fixture(scope="module")
def flux_ip_models(models_dir):
    import folder_paths

    pipe = tiny_dit.flux_pipeline(0, dev=True)
    ldm_export.save_diffusers_folder(pipe, models_dir / "diffusers" / "tiny-flux-dev-ip")
    ipadapter, clip_vision = models_dir / "ipadapter_dit", models_dir / "clip_vision_dit"
    embed = tiny_ip.ENCODER_SHAPES[tiny_ip.VIT_L]["projection_dim"]
    tiny_ip.save_adapter(tiny_ip.flux_adapter_state_dict(pipe.transformer, embed, 1), ipadapter / tiny_ip.FLUX_IP)
    tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_L, 0), clip_vision / tiny_ip.VIT_L)
    from diffusers_studio.nodes import ip_adapter as nodes_ip  # registers the ipadapter folder

    folder_paths.add_model_folder_path("ipadapter", str(ipadapter), is_default=True)
    folder_paths.add_model_folder_path("clip_vision", str(clip_vision), is_default=True)
    folder_paths.filename_list_cache.clear()
    return {"nodes": nodes_ip, "ipadapter": ipadapter}


def _picture(seed):
    """A random picture on the 8-bit grid, so the PIL copy the pipeline gets is the same picture."""
    torch.manual_seed(seed)
    return (torch.rand(1, 48, 40, 3) * 255).round() / 255


def _pil(image):
    from PIL import Image

    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


def _graph(nodes_ip, *, weight, cfg, negative="", negative_image=None, seed=9):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    model, text_encoder, vae = DSLoadModel.execute("tiny-flux-dev-ip", "float32").args
    pos = DSTextEncode.execute(text_encoder, "a cat", 1, 0, False, 0).args[0]
    neg = DSTextEncode.execute(text_encoder, negative, 1, 0, False, 0).args[0]
    assert nodes_ip.DSLoadIPAdapter.validate_inputs(tiny_ip.FLUX_IP, tiny_ip.VIT_L, "float32") is True
    adapter = nodes_ip.DSLoadIPAdapter.execute(tiny_ip.FLUX_IP, tiny_ip.VIT_L, "float32").args[0]
    patched = nodes_ip.DSApplyIPAdapter.execute(model, adapter, _picture(1), weight, 0.0, 1.0, "standard", None,
                                                negative_image).args[0]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    out = DSSampler.execute(patched, pos, neg, latent, seed, 3, cfg, "Euler", "normal", 1.0).args[0]
    return DSVAEDecode.execute(vae, out).args[0], (model, text_encoder, vae)


def _reference(folder, bundles, weight, **call):
    from diffusers import FluxPipeline

    model, text_encoder, vae = bundles
    copied = copy.copy(model)
    object.__setattr__(copied, "unet", copy.deepcopy(model.unet))
    pipe = tiny_dit.pipeline_of(FluxPipeline, (copied, text_encoder, vae))
    pipe.register_modules(image_encoder=tiny_ip.tiny_image_encoder(tiny_ip.VIT_L, 0))
    pipe.load_ip_adapter(str(folder), weight_name=tiny_ip.FLUX_IP, local_files_only=True)
    pipe.set_ip_adapter_scale(weight)
    return pipe(prompt="a cat", ip_adapter_image=_pil(_picture(1)), num_inference_steps=3, guidance_scale=3.5,
                height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(9), output_type="np", **call).images


def _assert_close(images, expected):
    assert images.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(images.numpy() - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"


def test_flux_ip_adapter_graph_matches_diffusers(flux_ip_models):
    images, bundles = _graph(flux_ip_models["nodes"], weight=0.7, cfg=1.0)
    _assert_close(images, _reference(flux_ip_models["ipadapter"], bundles, 0.7))


def test_flux_negative_image_with_true_cfg_matches_diffusers(flux_ip_models):
    negative_image = _picture(2)
    images, bundles = _graph(flux_ip_models["nodes"], weight=0.9, cfg=2.0, negative="fog",
                             negative_image=negative_image)
    expected = _reference(flux_ip_models["ipadapter"], bundles, 0.9, negative_prompt="fog", true_cfg_scale=2.0,
                          negative_ip_adapter_image=_pil(negative_image))
    _assert_close(images, expected)


def test_sd1_adapter_on_flux_is_refused_naming_both(flux_ip_models, models_dir):
    from diffusers_studio.nodes.loaders import DSLoadModel

    import tiny_models

    nodes_ip = flux_ip_models["nodes"]
    sd1_unet = tiny_models.tiny_sd1_components(0)["unet"]
    h_proj = tiny_ip.ENCODER_SHAPES[tiny_ip.VIT_H]["projection_dim"]
    tiny_ip.save_adapter(tiny_ip.adapter_state_dict(sd1_unet, "base", h_proj, 3),
                         flux_ip_models["ipadapter"] / "sd15-for-refusal.safetensors")
    tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_H, 0),
                                     models_dir / "clip_vision_dit" / tiny_ip.VIT_H)
    import folder_paths

    folder_paths.filename_list_cache.clear()
    adapter = nodes_ip.DSLoadIPAdapter.execute("sd15-for-refusal.safetensors", tiny_ip.VIT_H, "float32").args[0]
    model = DSLoadModel.execute("tiny-flux-dev-ip", "float32").args[0]
    with pytest.raises(ValueError, match=r"'sd15-for-refusal.safetensors' is an SD1.x/SDXL IP-Adapter.*Flux.1 dev"):
        nodes_ip.DSApplyIPAdapter.execute(model, adapter, _picture(1), 1.0, 0.0, 1.0, "standard")


def test_flux_encode_then_apply_embeds_equals_apply(flux_ip_models):
    """Encode IP-Adapter Image keeps the Flux negative (the black picture), so true CFG gives the same run."""
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler

    nodes_ip = flux_ip_models["nodes"]
    model, text_encoder, _ = DSLoadModel.execute("tiny-flux-dev-ip", "float32").args
    pos = DSTextEncode.execute(text_encoder, "a cat", 1, 0, False, 0).args[0]
    neg = DSTextEncode.execute(text_encoder, "fog", 1, 0, False, 0).args[0]
    adapter = nodes_ip.DSLoadIPAdapter.execute(tiny_ip.FLUX_IP, tiny_ip.VIT_L, "float32").args[0]
    embeds = nodes_ip.DSEncodeIPAdapterImage.execute(adapter, _picture(1)).args[0]
    via_embeds = nodes_ip.DSApplyIPAdapterEmbeds.execute(model, adapter, embeds, 0.8, 0.0, 1.0, "standard").args[0]
    via_image = nodes_ip.DSApplyIPAdapter.execute(model, adapter, _picture(1), 0.8, 0.0, 1.0, "standard").args[0]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    a, b = (DSSampler.execute(m, pos, neg, latent, 2, 2, 2.0, "Euler", "normal", 1.0).args[0]["samples"]
            for m in (via_embeds, via_image))
    assert torch.equal(a, b)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_flux_regions_with_ip_adapter_in_one_run(flux_ip_models, cfg):
    """The flux_canvas combination: the IP-Adapter acts on the region rows as on the base rows, so a region
    over the whole canvas gives the region prompt alone (IP-Adapter on in both), with and without true CFG;
    and the adapter still changes the regional run."""
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.regional import DSRegionalPrompt
    from diffusers_studio.nodes.sample import DSSampler

    nodes_ip = flux_ip_models["nodes"]
    model, text_encoder, _ = DSLoadModel.execute("tiny-flux-dev-ip", "float32").args
    base, car, neg = (DSTextEncode.execute(text_encoder, text, 1, 0, False, 0).args[0]
                      for text in ("a quiet landscape", "a red car", "fog"))
    adapter = nodes_ip.DSLoadIPAdapter.execute(tiny_ip.FLUX_IP, tiny_ip.VIT_L, "float32").args[0]
    patched = nodes_ip.DSApplyIPAdapter.execute(model, adapter, _picture(1), 0.8, 0.0, 1.0, "standard").args[0]
    whole = DSRegionalPrompt.execute(base, torch.ones(1, SIZE, SIZE), car, 1.0).args[0]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}

    def sample(m, positive):
        return DSSampler.execute(m, positive, neg, latent, 4, 2, cfg, "Euler", "normal", 1.0).args[0]["samples"]

    regional = sample(patched, whole)
    assert (regional - sample(patched, car)).abs().max() <= 1e-5
    assert (regional - sample(model, whole)).abs().max() > 1e-3
