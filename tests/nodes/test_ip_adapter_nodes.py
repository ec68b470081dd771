"""The IP-Adapter nodes as ComfyUI calls them, on tiny files in model folders.

The tiny adapters and encoders are the harness's (tests/harness/
models_ip_adapter.py), in models/ipadapter and models/clip_vision registered
with folder_paths; the model is the tiny SD1 checkpoint of conftest.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import models_ip_adapter as tiny_ip


@pytest.fixture(scope="module")
def ip_models(models_dir):
    import folder_paths

    tiny_ip.write(models_dir, 0)
    from diffusers_studio.nodes import ip_adapter as nodes_ip  # registers the ipadapter folder

    folder_paths.add_model_folder_path("ipadapter", str(models_dir / "ipadapter"), is_default=True)
    folder_paths.add_model_folder_path("clip_vision", str(models_dir / "clip_vision"), is_default=True)
    folder_paths.filename_list_cache.clear()
    return nodes_ip


@pytest.fixture(scope="module")
def graph(ip_models):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel

    model, text_encoder, _ = DSLoadModel.execute("tiny-sd15.safetensors", "float32").args
    pos = DSTextEncode.execute(text_encoder, "a cat", 1).args[0]
    neg = DSTextEncode.execute(text_encoder, "blurry", 1).args[0]
    return model, pos, neg


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(1, 40, 48, 3)).astype(np.float32) / 255.0)


def _sample(model, pos, neg):
    from diffusers_studio.nodes.sample import DSSampler

    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return DSSampler.execute(model, pos, neg, latent, 5, 3, 5.0, "Euler", "normal", 1.0).args[0]["samples"]


def _load(ip_models, name=tiny_ip.SD15_BASE, encoder=tiny_ip.VIT_H):
    return ip_models.DSLoadIPAdapter.execute(name, encoder, "float32").args[0]


def test_schemas_have_tooltips_and_descriptions(ip_models):
    for node in ip_models.NODES:
        schema = node.define_schema()
        assert schema.node_id.startswith("DS") and schema.description
        assert schema.category == "Diffusers Studio/ip_adapter"
        for item in list(schema.inputs) + list(schema.outputs):
            assert item.tooltip, f"{schema.node_id}: {item.id} has no tooltip"


def test_listings_offer_the_files(ip_models):
    assert tiny_ip.SD15_BASE in ip_models.ipadapter_names()
    assert tiny_ip.SDXL_BASE in ip_models.ipadapter_names()
    assert tiny_ip.VIT_H in ip_models.clip_vision_names()


@pytest.mark.parametrize("name", ["nope.safetensors", "../checkpoints/tiny-sd15.safetensors", "/etc/passwd"])
def test_unknown_names_are_refused_in_validation(ip_models, name):
    message = ip_models.DSLoadIPAdapter.validate_inputs(name, tiny_ip.VIT_H, "auto")
    assert isinstance(message, str) and "ipadapter_file" in message and name in message
    message = ip_models.DSLoadIPAdapter.validate_inputs(tiny_ip.SD15_BASE, name, "auto")
    assert isinstance(message, str) and "clip_vision" in message
    with pytest.raises(ValueError):
        ip_models.resolve_ipadapter_path(name)


def test_apply_changes_the_image_and_leaves_the_model_alone(ip_models, graph):
    model, pos, neg = graph
    plain = _sample(model, pos, neg)
    adapter = _load(ip_models)
    patched = ip_models.DSApplyIPAdapter.execute(model, adapter, _image(), 0.8, 0.0, 1.0, "standard").args[0]
    assert model.patches == () and len(patched.patches) == 1
    with_ip = _sample(patched, pos, neg)
    assert (with_ip - plain).abs().max() > 1e-3
    assert torch.equal(_sample(model, pos, neg), plain)


def test_embeds_node_gives_the_same_result_as_pictures(ip_models, graph):
    model, pos, neg = graph
    adapter = _load(ip_models, tiny_ip.SD15_PLUS)
    embeds = ip_models.DSEncodeIPAdapterImage.execute(adapter, _image(1)).args[0]
    a = ip_models.DSApplyIPAdapterEmbeds.execute(model, adapter, embeds, 0.7, 0.0, 1.0, "standard").args[0]
    b = ip_models.DSApplyIPAdapter.execute(model, adapter, _image(1), 0.7, 0.0, 1.0, "standard").args[0]
    assert torch.equal(_sample(a, pos, neg), _sample(b, pos, neg))


def test_mismatched_encoder_names_both_files(ip_models):
    with pytest.raises(ValueError) as err:
        _load(ip_models, tiny_ip.SDXL_BASE, tiny_ip.VIT_H)
    assert tiny_ip.SDXL_BASE in str(err.value) and tiny_ip.VIT_H in str(err.value)


def test_window_and_mode_are_validated(ip_models):
    assert "start_percent" in ip_models.DSApplyIPAdapter.validate_inputs("standard", 0.8, 0.2)
    assert "weight_mode" in ip_models.DSApplyIPAdapter.validate_inputs("loud", 0.0, 1.0)
    assert ip_models.DSApplyIPAdapter.validate_inputs("style", 0.0, 1.0) is True
