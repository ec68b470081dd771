"""DSRegionCanvas -> DSRegionalPrompt -> DSSampler on SD3 and Flux, as ComfyUI calls the nodes.

Graph: DSLoadModel (tiny diffusers folders) -> DSLoadLoRA -> DSTextEncode;
DSRegionCanvas draws the regions; DSRegionalPrompt chains them onto the base
prompt; DSSampler -> DSVAEDecode. No reference pipeline exists for regional
prompts, so the graph is checked against what the method promises
(engine/regional.py): a region over the whole canvas gives the region's
prompt alone, and after one step a half-canvas region leaves the other half
as the base prompt makes it (in latent space; the VAE mixes neighbours).
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import dit_loras
import ldm_export
import tiny_dit

TOL = 1e-5
SIZE = 64
CASES = [("tiny-flux-dev-regional", 1.0), ("tiny-flux-schnell-regional", 1.0), ("tiny-sd3-regional", 4.0)]


@pytest.fixture(scope="module")
def dit_setup(models_dir):
    import folder_paths

    folder = models_dir / "diffusers"
    loras = models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    made = {
        "tiny-flux-dev-regional": tiny_dit.flux_pipeline(0, dev=True),
        "tiny-flux-schnell-regional": tiny_dit.flux_pipeline(0, dev=False),
        "tiny-sd3-regional": tiny_dit.sd3_pipeline(0),
    }
    for name, pipe in made.items():
        ldm_export.save_diffusers_folder(pipe, folder / name)
        save_file(dit_loras.peft_lora(pipe.transformer, pipe.text_encoder, seed=7), str(loras / f"{name}.safetensors"))
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    folder_paths.filename_list_cache.clear()
    return models_dir


def _canvas(*regions):
    from diffusers_studio.nodes.region_masks import DSRegionCanvas

    text = json.dumps({"version": 1, "regions": list(regions)})
    assert DSRegionCanvas.validate_inputs(text) is True
    return DSRegionCanvas.execute(SIZE, SIZE, 0, text).args


def _graph(name):
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.lora import DSLoadLoRA

    model, text_encoder, vae = DSLoadModel.execute(name, "float32").args
    model, text_encoder = DSLoadLoRA.execute(model, text_encoder, f"{name}.safetensors", 0.8, 1.0).args
    return model, text_encoder, vae


def _encode(text_encoder, text, max_sequence_length=0):
    from diffusers_studio.nodes.encode import DSTextEncode

    return DSTextEncode.execute(text_encoder, text, 1, 0, False, max_sequence_length).args[0]


def _sample(model, positive, negative, cfg, steps=2):
    from diffusers_studio.nodes.sample import DSSampler

    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    return DSSampler.execute(model, positive, negative, latent, 5, steps, cfg, "Euler", "normal", 1.0).args[0]


@pytest.mark.parametrize("name,cfg", CASES)
def test_canvas_regions_through_the_sampler(dit_setup, name, cfg):
    from diffusers_studio.nodes.regional import DSRegionalPrompt
    from diffusers_studio.nodes.vae import DSVAEDecode

    model, text_encoder, vae = _graph(name)
    base, car, neg = _encode(text_encoder, "a quiet landscape"), _encode(text_encoder, "a red car"), \
        _encode(text_encoder, "blurry")
    whole, left = _canvas({"x": 0.0, "y": 0.0, "w": 1.0, "h": 1.0}, {"x": 0.0, "y": 0.0, "w": 0.5, "h": 1.0})[:2]

    full = DSRegionalPrompt.execute(base, whole, car, 1.0).args[0]
    got = _sample(model, full, neg, cfg)
    alone = _sample(model, car, neg, cfg)
    assert (got["samples"] - alone["samples"]).abs().max() <= TOL
    image = DSVAEDecode.execute(vae, got).args[0]
    assert (image - DSVAEDecode.execute(vae, alone).args[0]).abs().max() <= 1e-4

    half = DSRegionalPrompt.execute(base, left, car, 1.0).args[0]
    one, plain = _sample(model, half, neg, cfg, steps=1)["samples"], _sample(model, base, neg, cfg, steps=1)["samples"]
    right = slice(SIZE // 16, None)
    assert (one[..., right] - plain[..., right]).abs().max() <= TOL
    assert (one[..., : SIZE // 16] - plain[..., : SIZE // 16]).abs().max() > 100 * TOL


def test_mistakes_are_refused_naming_input_value_and_fix(dit_setup):
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.regional import DSRectMask, DSRegionalPrompt

    model, text_encoder, _ = _graph("tiny-flux-dev-regional")
    base, car = _encode(text_encoder, "a quiet landscape"), _encode(text_encoder, "a red car")
    _, sd1_encoder, _ = DSLoadModel.execute("tiny-sd15.safetensors", "float32").args
    left = DSRectMask.execute(SIZE, SIZE, "fraction", 0.0, 0.0, 0.5, 1.0, 8).args[0]
    with pytest.raises(ValueError, match="region_conditioning was encoded for sd1, but the base conditioning is "
                                         "flux: encode every region's prompt with the same checkpoint"):
        DSRegionalPrompt.execute(base, left, _encode(sd1_encoder, "a red car"), 1.0)
    with pytest.raises(ValueError, match="region_conditioning is 32 tokens long, the base conditioning 512"):
        DSRegionalPrompt.execute(base, left, _encode(text_encoder, "a red car", 32), 1.0)
    wide = DSRectMask.execute(SIZE * 2, SIZE, "fraction", 0.0, 0.0, 0.5, 1.0, 0).args[0]
    regional = DSRegionalPrompt.execute(base, wide, car, 1.0).args[0]
    with pytest.raises(ValueError, match=r"region 1's mask is 128x64 pixels, the image 64x64: Flux.1 dev regional "
                                         r"masks must have the image's aspect ratio.*width and height"):
        _sample(model, regional, None, 1.0, steps=1)
