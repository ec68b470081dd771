"""The ControlNet nodes with ComfyUI importable: listing, schemas, a graph run.

The tiny ControlNets are written under models/controlnet by the harness
(the same files the integration tests and `make run` use) and loaded back by
name through DSLoadControlNet, as ComfyUI would.
"""
from __future__ import annotations

import pytest
import torch

from harness import models_controlnet as mc


@pytest.fixture(scope="module")
def cn_dir(models_dir):
    import folder_paths

    root = models_dir / "controlnet"
    if not root.is_dir():
        mc.write(models_dir, 0)
    folder_paths.add_model_folder_path("controlnet", str(root), is_default=True)
    folder_paths.filename_list_cache.clear()
    return root


def _nodes():
    from diffusers_studio.nodes import controlnet

    return controlnet


def test_schemas_have_descriptions_and_tooltips():
    mod = _nodes()
    ids = []
    for node in mod.NODES:
        schema = node.define_schema()
        ids.append(schema.node_id)
        assert schema.description and schema.category == "Diffusers Studio/controlnet"
        assert schema.display_name and not schema.display_name.startswith("DS")
        for socket in list(schema.inputs) + list(schema.outputs):
            assert socket.tooltip, f"{schema.node_id}.{socket.id or socket.display_name} has no tooltip"
    assert ids == ["DSLoadControlNet", "DSApplyControlNet", "DSCannyEdges", "DSLineArtThreshold"]


def test_listing_has_files_and_folders_only_once(cn_dir):
    names = _nodes().controlnet_names()
    assert {mc.SD15_CANNY, mc.SDXL_CANNY, mc.SD15_LINEART_FOLDER} <= set(names)
    assert not any(n.startswith(mc.SD15_LINEART_FOLDER + "/") for n in names)


@pytest.mark.parametrize("name", ["nope.safetensors", "../checkpoints/tiny-sd15.safetensors", "/etc/passwd"])
def test_unknown_or_escaping_names_are_refused(cn_dir, name):
    mod = _nodes()
    message = mod.DSLoadControlNet.validate_inputs(name, "auto")
    assert isinstance(message, str) and "control_net_name" in message and name in message
    with pytest.raises(ValueError, match="control_net_name"):
        mod.DSLoadControlNet.execute(name, "float32")


def test_canny_threshold_order_is_validated():
    mod = _nodes()
    assert mod.DSCannyEdges.validate_inputs(100, 200) is True
    assert "low_threshold" in mod.DSCannyEdges.validate_inputs(200, 100)


def test_graph_with_controlnet_and_no_leak_after(cn_dir):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler

    mod = _nodes()
    model, text_encoder, _ = DSLoadModel.execute("tiny-sd15.safetensors", "float32").args
    pos = DSTextEncode.execute(text_encoder, "a house", 1).args[0]
    neg = DSTextEncode.execute(text_encoder, "", 1).args[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}

    def run(p, n):
        return DSSampler.execute(model, p, n, latent, 5, 2, 7.0, "Euler", "normal", 1.0).args[0]["samples"]

    plain = run(pos, neg)
    control_net = mod.DSLoadControlNet.execute(mc.SD15_CANNY, "auto").args[0]
    picture = torch.rand(1, 48, 40, 3, generator=torch.Generator().manual_seed(0))
    hint = mod.DSCannyEdges.execute(picture, 50, 100).args[0]
    assert hint.shape == (1, 48, 40, 3)
    p2, n2 = mod.DSApplyControlNet.execute(pos, neg, control_net, hint, 1.0, 0.0, 1.0, False).args
    assert p2.extras[-1] is n2.extras[-1] and pos.extras == ()
    lineart = mod.DSLineArtThreshold.execute(picture, 0.5, True).args[0]
    folder_cn = mod.DSLoadControlNet.execute(mc.SD15_LINEART_FOLDER, "float32").args[0]
    p3, n3 = mod.DSApplyControlNet.execute(p2, n2, folder_cn, lineart, 0.5, 0.0, 0.5, False,
                                           torch.ones(1, 16, 16)).args
    controlled = run(p3, n3)
    assert (controlled - plain).abs().max() > 1e-3
    assert torch.equal(run(pos, neg), plain)


def test_sdxl_controlnet_on_sd1_model_is_refused_when_sampling(cn_dir):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler

    mod = _nodes()
    model, text_encoder, _ = DSLoadModel.execute("tiny-sd15.safetensors", "float32").args
    pos = DSTextEncode.execute(text_encoder, "a house", 1).args[0]
    xl = mod.DSLoadControlNet.execute(mc.SDXL_CANNY, "float32").args[0]
    p, n = mod.DSApplyControlNet.execute(pos, pos, xl, torch.zeros(1, 64, 64, 3), 1.0, 0.0, 1.0, False).args
    with pytest.raises(ValueError, match="SDXL ControlNet, but the model"):
        DSSampler.execute(model, p, n, {"samples": torch.zeros(1, 4, 8, 8)}, 0, 1, 7.0, "Euler", "normal", 1.0)


def test_controlnet_img2img_graph_matches_the_pipeline_fed_pil_pictures(cn_dir):
    """Diffusers VAE Encode (latent_sampling "sample") + Apply ControlNet -> Sampler -> Decode
    equals StableDiffusionControlNetImg2ImgPipeline(image=PIL, control_image=PIL), same seed."""
    import numpy as np
    import pil_inputs
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.engine.schedulers import make_scheduler
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode, DSVAEEncode

    mod = _nodes()
    model, te, vae = DSLoadModel.execute("tiny-sd15.safetensors", "float32").args
    photo, hint = pil_inputs.picture(11), pil_inputs.picture(12)
    control_net = mod.DSLoadControlNet.execute(mc.SD15_CANNY, "float32").args[0]
    pos = DSTextEncode.execute(te, "a house", 1).args[0]
    neg = DSTextEncode.execute(te, "fog", 1).args[0]
    p, n = mod.DSApplyControlNet.execute(pos, neg, control_net, pil_inputs.as_image(hint), 0.8, 0.0, 1.0,
                                         False).args
    latent = DSVAEEncode.execute(vae, pil_inputs.as_image(photo)).args[0]
    out = DSSampler.execute(model, p, n, latent, 9, 5, 6.0, "Euler a", "normal", 0.7).args[0]
    images = DSVAEDecode.execute(vae, out).args[0]

    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=vae.vae, text_encoder=te.text_encoders[0], tokenizer=te.tokenizers[0], unet=model.unet,
        controlnet=control_net.module, scheduler=make_scheduler(model.scheduler_config, "Euler a", "normal"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt="a house", negative_prompt="fog", image=photo, control_image=hint, strength=0.7,
                    num_inference_steps=5, guidance_scale=6.0, controlnet_conditioning_scale=0.8,
                    generator=torch.Generator().manual_seed(9), output_type="np").images
    diff = float(np.abs(images.numpy() - expected).max())
    assert diff <= 1e-4, f"max abs difference {diff}"
