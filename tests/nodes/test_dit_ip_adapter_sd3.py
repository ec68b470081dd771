"""SD3 / SD3.5 IP-Adapter through the node graph against StableDiffusion3Pipeline + load_ip_adapter.

DSLoadModel -> DSTextEncode -> DSLoadIPAdapter (an InstantX-layout file in
models/ipadapter, a SigLIP vision model in models/clip_vision, as a single
file and as a transformers folder) -> DSApplyIPAdapter -> DSSampler (CFG) ->
DSVAEDecode, run as ComfyUI calls them; the reference is
StableDiffusion3Pipeline built from the same loaded modules (the transformer
copied: load_ip_adapter rewrites it), `load_ip_adapter(folder,
weight_name=...)` on the same file, the same tiny SigLIP as its
image_encoder with a SiglipImageProcessor as its feature_extractor, and a PIL
`ip_adapter_image`. Float32, decoded images within 1e-4.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import ldm_export
from pil_inputs import random_image, to_pil
import tiny_dit
from harness import models_ip_adapter as tiny_ip

TOL = 1e-4
SIZE = 64
MODEL = "tiny-sd3-ip"
SIGLIP_FOLDER = "siglip-so400m-folder"


@pytest.fixture(scope="module")
def sd3_ip_models(models_dir):
    import folder_paths

    pipe = tiny_dit.sd3_pipeline(0)
    ldm_export.save_diffusers_folder(pipe, models_dir / "diffusers" / MODEL)
    ipadapter, clip_vision = models_dir / "ipadapter_sd3", models_dir / "clip_vision_sd3"
    tiny_ip.save_adapter(tiny_ip.sd3_adapter_state_dict(pipe.transformer, seed=1), ipadapter / tiny_ip.SD3_IP)
    siglip = tiny_ip.tiny_siglip_encoder(0)
    tiny_ip.save_siglip_single_file(siglip, clip_vision / tiny_ip.SIGLIP)
    siglip.save_pretrained(str(clip_vision / SIGLIP_FOLDER))
    tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_L, 0), clip_vision / tiny_ip.VIT_L)
    from diffusers_studio.nodes import ip_adapter as nodes_ip  # registers the ipadapter folder

    folder_paths.add_model_folder_path("ipadapter", str(ipadapter), is_default=True)
    folder_paths.add_model_folder_path("clip_vision", str(clip_vision), is_default=True)
    folder_paths.filename_list_cache.clear()
    return {"nodes": nodes_ip, "ipadapter": ipadapter}


def _load(nodes_ip, encoder=tiny_ip.SIGLIP):
    assert nodes_ip.DSLoadIPAdapter.validate_inputs(tiny_ip.SD3_IP, encoder, "float32") is True
    return nodes_ip.DSLoadIPAdapter.execute(tiny_ip.SD3_IP, encoder, "float32").args[0]


def _graph(nodes_ip, *, weight, cfg, encoder=tiny_ip.SIGLIP, seed=9):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    model, text_encoder, vae = DSLoadModel.execute(MODEL, "float32").args
    pos = DSTextEncode.execute(text_encoder, "a cat", 1, 0, False, 0).args[0]
    neg = DSTextEncode.execute(text_encoder, "fog", 1, 0, False, 0).args[0]
    patched = nodes_ip.DSApplyIPAdapter.execute(model, _load(nodes_ip, encoder), random_image(1), weight, 0.0, 1.0,
                                                "standard").args[0]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    out = DSSampler.execute(patched, pos, neg, latent, seed, 3, cfg, "Euler", "normal", 1.0).args[0]
    return DSVAEDecode.execute(vae, out).args[0], (model, text_encoder, vae)


def _reference(folder, bundles, weight, cfg):
    from diffusers import StableDiffusion3Pipeline

    model, text_encoder, vae = bundles
    copied = copy.copy(model)
    object.__setattr__(copied, "unet", copy.deepcopy(model.unet))
    pipe = tiny_dit.pipeline_of(StableDiffusion3Pipeline, (copied, text_encoder, vae))
    pipe.register_modules(image_encoder=tiny_ip.tiny_siglip_encoder(0), feature_extractor=tiny_ip.siglip_processor())
    pipe.load_ip_adapter(str(folder), weight_name=tiny_ip.SD3_IP, local_files_only=True)
    pipe.set_ip_adapter_scale(weight)
    return pipe(prompt="a cat", negative_prompt="fog", ip_adapter_image=to_pil(random_image(1)), num_inference_steps=3,
                guidance_scale=cfg, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(9),
                output_type="np").images


def _assert_close(images, expected):
    assert images.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(images.numpy() - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"


@pytest.mark.parametrize("encoder", [tiny_ip.SIGLIP, SIGLIP_FOLDER])
def test_sd3_ip_adapter_graph_matches_diffusers(sd3_ip_models, encoder):
    images, bundles = _graph(sd3_ip_models["nodes"], weight=0.8, cfg=5.0, encoder=encoder)
    _assert_close(images, _reference(sd3_ip_models["ipadapter"], bundles, 0.8, 5.0))


def test_sd3_encode_then_apply_embeds_equals_apply(sd3_ip_models):
    """Encode IP-Adapter Image keeps the SD3 negative (zeros), so a CFG run is the same."""
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler

    nodes_ip = sd3_ip_models["nodes"]
    model, text_encoder, _ = DSLoadModel.execute(MODEL, "float32").args
    pos = DSTextEncode.execute(text_encoder, "a cat", 1, 0, False, 0).args[0]
    neg = DSTextEncode.execute(text_encoder, "fog", 1, 0, False, 0).args[0]
    adapter = _load(nodes_ip)
    embeds = nodes_ip.DSEncodeIPAdapterImage.execute(adapter, random_image(1)).args[0]
    assert embeds.zero_negative and not embeds.negative.any()
    via_embeds = nodes_ip.DSApplyIPAdapterEmbeds.execute(model, adapter, embeds, 0.8, 0.0, 1.0, "standard").args[0]
    via_image = nodes_ip.DSApplyIPAdapter.execute(model, adapter, random_image(1), 0.8, 0.0, 1.0, "standard").args[0]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    a, b = (DSSampler.execute(m, pos, neg, latent, 2, 2, 4.0, "Euler", "normal", 1.0).args[0]["samples"]
            for m in (via_embeds, via_image))
    assert torch.equal(a, b)


def test_sd3_file_with_a_clip_encoder_is_refused_at_load(sd3_ip_models):
    with pytest.raises(ValueError, match=r"clip-vit-large-patch14.safetensors.*CLIP vision model.*SD3.5 IP-Adapter"):
        _load(sd3_ip_models["nodes"], tiny_ip.VIT_L)


def test_sd3_file_on_sd15_is_refused_naming_both(sd3_ip_models):
    from diffusers_studio.nodes.loaders import DSLoadModel

    model = DSLoadModel.execute("tiny-sd15", "float32").args[0]
    refusal = r"'sd35-large-ip-adapter.safetensors' is an SD3.5 IP-Adapter.*Stable Diffusion 1"
    with pytest.raises(ValueError, match=refusal):
        sd3_ip_models["nodes"].DSApplyIPAdapter.execute(model, _load(sd3_ip_models["nodes"]), random_image(1), 1.0, 0.0,
                                                        1.0, "standard")
