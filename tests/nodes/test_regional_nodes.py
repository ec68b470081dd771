"""DSRegionalPrompt and DSRectMask as ComfyUI calls them (schemas, execute, errors)."""
from __future__ import annotations

import pytest
import torch


def _sample(model, positive, negative, steps=2):
    from diffusers_studio.nodes.sample import DSSampler

    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return DSSampler.execute(model, positive, negative, latent, seed=1, steps=steps, cfg=7.0,
                             sampler_name="Euler", schedule="normal", denoise=1.0).args[0]["samples"]


def test_schemas_have_tooltips_and_the_pack_lists_them(models_dir):
    from diffusers_studio.nodes.extension import NODES
    from diffusers_studio.nodes.regional import DSRectMask, DSRegionalPrompt

    for node in (DSRegionalPrompt, DSRectMask):
        schema = node.define_schema()
        assert schema.category == "Diffusers Studio/regional" and schema.description
        assert all(socket.tooltip for socket in list(schema.inputs) + list(schema.outputs))
        assert node in NODES
    optional = [s.id for s in DSRegionalPrompt.define_schema().inputs if s.optional]
    assert optional == ["region_negative"]


def test_rect_mask_in_fractions_and_pixels(models_dir):
    from diffusers_studio.nodes.regional import DSRectMask

    frac = DSRectMask.execute(64, 32, "fraction", 0.5, 0.0, 0.5, 1.0, 0).args[0]
    pixels = DSRectMask.execute(64, 32, "pixels", 32.0, 0.0, 32.0, 32.0, 0).args[0]
    assert frac.shape == (1, 32, 64) and torch.equal(frac, pixels)
    assert frac[0, :, 32:].eq(1).all() and frac[0, :, :32].eq(0).all()
    message = DSRectMask.validate_inputs("fraction", 0.0, 0.0, 256.0, 1.0)
    assert isinstance(message, str) and "rect_width: 256.0" in message and "pixels" in message
    with pytest.raises(ValueError, match="rect_width"):
        DSRectMask.execute(64, 32, "fraction", 0.0, 0.0, 256.0, 1.0, 0)


def test_regional_prompt_through_the_sampler(models_dir):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.regional import DSRectMask, DSRegionalPrompt

    model, text_encoder, _ = DSLoadModel.execute("tiny-sd15.safetensors", "float32").args
    encode = lambda text: DSTextEncode.execute(text_encoder, text, 1).args[0]  # noqa: E731
    base, negative = encode("a landscape"), encode("blurry")
    left = DSRectMask.execute(64, 64, "fraction", 0.0, 0.0, 0.5, 1.0, 8).args[0]
    right = DSRectMask.execute(64, 64, "fraction", 0.5, 0.0, 0.5, 1.0, 8).args[0]
    regional = DSRegionalPrompt.execute(base, left, encode("a red car"), 1.0).args[0]
    regional = DSRegionalPrompt.execute(regional, right, encode("a blue sky"), 0.8, encode("clouds")).args[0]
    assert base.extras == () and len(regional.extras[0].regions) == 2
    plain = _sample(model, base, negative)
    out = _sample(model, regional, negative)
    assert out.shape == plain.shape and (out - plain).abs().max() > 1e-3

    _, sdxl_encoder, _ = DSLoadModel.execute("tiny-sdxl.safetensors", "float32").args
    sdxl_region = DSTextEncode.execute(sdxl_encoder, "a red car", 1).args[0]
    with pytest.raises(ValueError, match="region_conditioning was encoded for sdxl"):
        DSRegionalPrompt.execute(base, left, sdxl_region, 1.0)
