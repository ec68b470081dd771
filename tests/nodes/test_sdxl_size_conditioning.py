"""DSSDXLSizeConditioning against diffusers' original_size / crops_coords_top_left / target_size.

The graph load -> encode -> size conditioning (positive and negative) ->
sample -> decode, run through the nodes' `execute`, equals
StableDiffusionXLPipeline given the same sizes as its (negative_)original_size,
(negative_)crops_coords_top_left and (negative_)target_size; float32, 1e-4.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_graph_parity import TOL, _nodes, _reference

SDXL_MODEL = "tiny-sdxl.safetensors"


def _node():
    from diffusers_studio.nodes.sdxl_conditioning import DSSDXLSizeConditioning

    return DSSDXLSizeConditioning


def test_schema_has_tooltips():
    schema = _node().define_schema()
    assert schema.node_id == "DSSDXLSizeConditioning" and schema.category.endswith("/conditioning")
    assert [i.id for i in schema.inputs] == ["conditioning", "original_width", "original_height", "crop_left",
                                             "crop_top", "target_width", "target_height"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)


def test_sizes_match_diffusers(models_dir):
    from diffusers import StableDiffusionXLPipeline

    load, encode, sampler, decode, _ = _nodes()
    model, text_encoder, vae = load.execute(SDXL_MODEL, "float32").args
    positive = encode.execute(text_encoder, "a photo of a cat", 1).args[0]
    negative = encode.execute(text_encoder, "blurry", 1).args[0]
    positive = _node().execute(positive, 256, 192, 16, 8, 128, 96).args[0]  # w, h, left, top, target w, h
    negative = _node().execute(negative, 64, 64, 0, 0, 0, 0).args[0]
    out = sampler.execute(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, 42, 4, 6.0,
                          "Euler", "normal", 1.0).args[0]
    images = decode.execute(vae, out).args[0]

    expected = _reference(
        StableDiffusionXLPipeline, (model, text_encoder, vae), "Euler", "normal",
        prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=4, guidance_scale=6.0,
        height=64, width=64, generator=torch.Generator().manual_seed(42),
        original_size=(192, 256), crops_coords_top_left=(8, 16), target_size=(96, 128),
        negative_original_size=(64, 64), negative_crops_coords_top_left=(0, 0), negative_target_size=(64, 64),
    )
    diff = np.abs(images.numpy() - expected).max()
    assert diff <= TOL, f"max abs difference {diff}"

    plain = sampler.execute(model, encode.execute(text_encoder, "a photo of a cat", 1).args[0],
                            encode.execute(text_encoder, "blurry", 1).args[0], {"samples": torch.zeros(1, 4, 8, 8)},
                            42, 4, 6.0, "Euler", "normal", 1.0).args[0]
    assert not torch.equal(plain["samples"], out["samples"])  # the sizes reached the UNet


def test_bad_inputs_are_named(models_dir):
    load, encode, *_ = _nodes()
    _, sd1_text_encoder, _ = load.execute("tiny-sd15.safetensors", "float32").args
    sd1_prompt = encode.execute(sd1_text_encoder, "a cat", 1).args[0]
    with pytest.raises(ValueError, match=r"conditioning: size conditioning is an SDXL input.*SD1.x"):
        _node().execute(sd1_prompt, 1024, 1024, 0, 0, 0, 0)
    _, text_encoder, _ = load.execute(SDXL_MODEL, "float32").args
    prompt = encode.execute(text_encoder, "a cat", 1).args[0]
    with pytest.raises(ValueError, match=r"target_width and target_height must both be set or both be 0"):
        _node().execute(prompt, 1024, 1024, 0, 0, 512, 0)
    with pytest.raises(ValueError, match=r"crop_left must be a whole number of pixels from 0 to 16384, got -8"):
        _node().execute(prompt, 1024, 1024, -8, 0, 0, 0)


def test_aesthetic_score_node_schema_and_refusal(models_dir):
    """The refiner's score lives on its prompts; an SDXL base (or SD1) prompt refuses it by name."""
    from diffusers_studio.nodes.sdxl_conditioning import DSSDXLAestheticScore

    schema = DSSDXLAestheticScore.define_schema()
    assert schema.node_id == "DSSDXLAestheticScore" and schema.category.endswith("/conditioning")
    assert [i.id for i in schema.inputs] == ["conditioning", "aesthetic_score"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)

    load, encode, *_ = _nodes()
    _, text_encoder, _ = load.execute(SDXL_MODEL, "float32").args
    positive = encode.execute(text_encoder, "a photo of a cat", 1).args[0]
    with pytest.raises(ValueError, match=r"aesthetic score is an SDXL refiner input.*SDXL text encoder.*leave"):
        DSSDXLAestheticScore.execute(positive, 6.0)
