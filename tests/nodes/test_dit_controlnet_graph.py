"""Flux / SD3 ControlNets through the node graph against diffusers' ControlNet pipelines.

DSLoadModel -> DSTextEncode -> DSLoadControlNet -> DSApplyControlNet (with
the model's VAE) -> DSSampler -> DSVAEDecode, run as ComfyUI calls them; the
reference is FluxControlNetPipeline / StableDiffusion3ControlNetPipeline built
from the very same loaded modules, called with a PIL control image, same seed.
Float32, decoded images within 1e-4. (Why the SD3 model here has a narrow VAE
posterior: see tiny_dit.narrow_posterior.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ldm_export
import tiny_dit

TOL = 1e-4
SIZE = 64


@pytest.fixture(scope="module")
def dit_cn_models(models_dir):
    import folder_paths

    folder = models_dir / "diffusers"
    ldm_export.save_diffusers_folder(tiny_dit.flux_pipeline(0, dev=True), folder / "tiny-flux-dev-cn")
    sd3 = tiny_dit.sd3_pipeline(0)
    tiny_dit.narrow_posterior(sd3.vae)
    ldm_export.save_diffusers_folder(sd3, folder / "tiny-sd3-cn")
    cn = models_dir / "controlnet_dit"  # its own folder: test_controlnet_nodes fills models/controlnet when absent
    tiny_dit.tiny_flux_controlnet(1).save_pretrained(str(cn / "tiny-flux-cn"))
    tiny_dit.tiny_flux_controlnet(2, num_mode=4).save_pretrained(str(cn / "tiny-flux-cn-union"))
    tiny_dit.tiny_sd3_controlnet(3).save_pretrained(str(cn / "tiny-sd3-cn"))
    folder_paths.add_model_folder_path("controlnet", str(cn), is_default=True)
    folder_paths.filename_list_cache.clear()
    return models_dir


def _nodes():
    from diffusers_studio.nodes.controlnet import DSApplyControlNet, DSLoadControlNet
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    return DSLoadModel, DSTextEncode, DSLoadControlNet, DSApplyControlNet, DSSampler, DSVAEDecode


def _hint():
    torch.manual_seed(3)
    return (torch.rand(1, SIZE, SIZE, 3) * 255).round() / 255


def _pil(image):
    from PIL import Image

    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


def _graph(model_name, cn_name, negative, *, seed, cfg, strength, end, mode=-1, with_vae=True):
    load, encode, load_cn, apply_cn, sampler, decode = _nodes()
    model, text_encoder, vae = load.execute(model_name, "float32").args
    pos = encode.execute(text_encoder, "a cat", 1, 0, False, 0).args[0]
    neg = encode.execute(text_encoder, negative, 1, 0, False, 0).args[0]
    assert load_cn.validate_inputs(cn_name, "float32") is True
    control_net = load_cn.execute(cn_name, "float32").args[0]
    pos, neg = apply_cn.execute(pos, neg, control_net, _hint(), strength, 0.0, end, False, None,
                                vae if with_vae else None, mode).args
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    out = sampler.execute(model, pos, neg, latent, seed, 4, cfg, "Euler", "normal", 1.0).args[0]
    return decode.execute(vae, out).args[0], (model, text_encoder, vae, control_net)


def _pipeline(pipe_cls, bundles):
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, text_encoder, vae, control_net = bundles
    parts = {"transformer": model.unet, "vae": vae.vae, "controlnet": control_net.module,
             "scheduler": FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)}
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")]
    for (enc_name, tok_name), enc, tok in zip(names, text_encoder.text_encoders, text_encoder.tokenizers):
        parts[enc_name], parts[tok_name] = enc, tok
    pipe = pipe_cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_close(images, expected):
    assert images.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(images.numpy() - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"


@pytest.mark.parametrize("cn_name,mode", [("tiny-flux-cn", -1), ("tiny-flux-cn-union", 1)])
def test_flux_controlnet_graph_matches_diffusers(dit_cn_models, cn_name, mode):
    from diffusers import FluxControlNetPipeline

    images, bundles = _graph("tiny-flux-dev-cn", cn_name, "", seed=9, cfg=1.0, strength=0.8, end=0.75, mode=mode)
    kwargs = {"control_mode": mode} if mode >= 0 else {}
    expected = _pipeline(FluxControlNetPipeline, bundles)(
        prompt="a cat", control_image=_pil(_hint()), controlnet_conditioning_scale=0.8, control_guidance_end=0.75,
        num_inference_steps=4, guidance_scale=3.5, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(9), output_type="np", **kwargs,
    ).images
    _assert_close(images, expected)


def test_sd3_controlnet_graph_matches_diffusers(dit_cn_models):
    from diffusers import StableDiffusion3ControlNetPipeline

    images, bundles = _graph("tiny-sd3-cn", "tiny-sd3-cn", "blurry", seed=4, cfg=4.0, strength=1.0, end=1.0)
    expected = _pipeline(StableDiffusion3ControlNetPipeline, bundles)(
        prompt="a cat", negative_prompt="blurry", control_image=_pil(_hint()), controlnet_conditioning_scale=1.0,
        num_inference_steps=4, guidance_scale=4.0, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(4), output_type="np",
    ).images
    _assert_close(images, expected)


def test_flux_controlnet_without_vae_is_refused(dit_cn_models):
    with pytest.raises(ValueError, match="vae: none connected"):
        _graph("tiny-flux-dev-cn", "tiny-flux-cn", "", seed=1, cfg=1.0, strength=1.0, end=1.0, with_vae=False)


def test_flux_controlnet_on_sd3_is_refused_before_sampling(dit_cn_models):
    with pytest.raises(ValueError, match=r"'tiny-flux-cn' is a Flux\.1 ControlNet, but positive was encoded for SD3"):
        _graph("tiny-sd3-cn", "tiny-flux-cn", "", seed=1, cfg=1.0, strength=1.0, end=1.0)


def test_shipped_workflows_save_a_value_for_every_apply_controlnet_widget():
    """The editor fills widgets in schema order: the new control_mode widget needs a value in each workflow,
    -1 unless the ControlNet it applies is a Flux Union one (flux_controlnet: 0, canny)."""
    import json

    from harness.workflow_api import example_workflow_files, expected_widget_count, widget_values

    info = _nodes()[3].GET_NODE_INFO_V1()
    found, unions = 0, 0
    for path in example_workflow_files():
        workflow = json.loads(path.read_text(encoding="utf-8"))
        nodes = {node["id"]: node for node in workflow["nodes"]}
        sources = {link[0]: link[1] for link in workflow["links"]}
        for node in workflow["nodes"]:
            if node["type"] != "DSApplyControlNet":
                continue
            found += 1
            assert len(node["widgets_values"]) == expected_widget_count(info), path.name
            values = widget_values(node, info)
            socket = next(s for s in node["inputs"] if s["name"] == "control_net")
            loader = nodes[sources[socket["link"]]]
            union = "union" in str(loader["widgets_values"][0]).lower()
            unions += union
            assert isinstance(values["guess_mode"], bool), path.name
            assert values["control_mode"] == (0 if union else -1), (path.name, values["control_mode"])
    assert found >= 4 and unions >= 1
