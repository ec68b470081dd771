"""DSSeamlessTiling and DSSDUpscale on the tiny SD1.5 checkpoint, through ComfyUI's own helpers."""
from __future__ import annotations

import pytest
import torch

MODEL = "tiny-sd15.safetensors"


@pytest.fixture
def loaded(models_dir):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel

    model, text_encoder, vae = DSLoadModel.execute(MODEL, "float32").args
    pos = DSTextEncode.execute(text_encoder, "stone wall", 1).args[0]
    neg = DSTextEncode.execute(text_encoder, "", 1).args[0]
    return model, vae, pos, neg


def _modules_untouched(*modules) -> bool:
    return not any("_conv_forward" in vars(m) for module in modules for m in module.modules())


def test_seamless_node_returns_new_values_and_the_graph_runs_with_them(loaded):
    from diffusers_studio.nodes.engine.seamless import seamless_of
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.seamless import DSSeamlessTiling
    from diffusers_studio.nodes.vae import DSVAEDecode

    model, vae, pos, neg = loaded
    assert DSSeamlessTiling.validate_inputs("sideways").startswith("axes: 'sideways'")
    tiled_model, tiled_vae = DSSeamlessTiling.execute(model, vae, "x only").args
    assert model.patches == () and vae.patches == ()  # ComfyUI's cached outputs stay plain
    assert seamless_of(tiled_model).axes == "x only" and seamless_of(tiled_vae) is seamless_of(tiled_model)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    args = dict(seed=1, steps=2, cfg=5.0, sampler_name="Euler", schedule="normal", denoise=1.0)
    tiled = DSVAEDecode.execute(tiled_vae, DSSampler.execute(tiled_model, pos, neg, latent, **args).args[0]).args[0]
    plain = DSVAEDecode.execute(vae, DSSampler.execute(model, pos, neg, latent, **args).args[0]).args[0]
    assert tiled.shape == plain.shape == (1, 64, 64, 3)
    assert (tiled - plain).abs().max() > 1e-3
    assert _modules_untouched(model.unet, vae.vae)
    again = DSVAEDecode.execute(vae, DSSampler.execute(model, pos, neg, latent, **args).args[0]).args[0]
    assert torch.equal(again, plain)


@pytest.fixture
def progress(monkeypatch):
    from diffusers_studio.nodes import comfy_bridge

    seen = []
    real = comfy_bridge.step_reporter

    def reporter(total_steps, preview, device):
        report = real(total_steps, preview, device)

        def wrapped(step, total, x0):
            seen.append((step, total))
            report(step, total, x0)

        return wrapped

    monkeypatch.setattr(comfy_bridge, "step_reporter", reporter)
    return seen


def test_sd_upscale_node_enlarges_and_redraws_every_tile(loaded, progress):
    from diffusers_studio.nodes.sd_upscale import DSSDUpscale

    model, vae, pos, neg = loaded
    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    out = DSSDUpscale.execute(image, model, pos, neg, vae, scale=2.0, upscale_method="lanczos", tile_width=64,
                              tile_height=64, overlap=16, denoise=0.5, seed=3, steps=4, cfg=5.0,
                              sampler_name="Euler", schedule="normal").args[0]
    assert out.shape == (1, 96, 128, 3) and 0 <= out.min() and out.max() <= 1
    assert progress == [(s, 12) for s in range(12)]  # 6 tiles x 2 steps, one bar
    same = DSSDUpscale.execute(image, model, pos, neg, vae, scale=2.0, tile_width=64, tile_height=64, overlap=16,
                               denoise=0.5, seed=3, steps=4, cfg=5.0, sampler_name="Euler").args[0]
    assert torch.equal(out, same)  # seeded


def test_sd_upscale_node_takes_the_native_tile_size_and_an_upscale_model(loaded):
    import spandrel
    from spandrel.architectures.ESRGAN import ESRGAN

    from diffusers_studio.nodes.sd_upscale import DSSDUpscale

    model, vae, pos, neg = loaded
    torch.manual_seed(0)
    esrgan = spandrel.ModelLoader().load_from_state_dict(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1,
                                                                scale=2).state_dict()).eval()
    image = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(1))
    out = DSSDUpscale.execute(image, model, pos, neg, vae, scale=3.0, upscale_method="bicubic", overlap=8,
                              denoise=0.3, seed=0, steps=2, cfg=5.0, sampler_name="Euler",
                              upscale_model=esrgan).args[0]
    assert out.shape == (1, 120, 120, 3)  # one 512-native tile clipped to the picture; x2 model then bicubic to x3


def test_sd_upscale_node_cancel_stops_between_tiles(loaded, monkeypatch):
    from diffusers_studio.nodes import comfy_bridge
    from diffusers_studio.nodes.sd_upscale import DSSDUpscale

    model, vae, pos, neg = loaded
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 3:  # before tile 1, its one step, then before tile 2
            raise InterruptedError("Cancel")

    monkeypatch.setattr(comfy_bridge, "raise_if_interrupted", interrupt)
    with pytest.raises(InterruptedError):
        DSSDUpscale.execute(torch.rand(1, 64, 64, 3), model, pos, neg, vae, scale=2.0, tile_width=64,
                            tile_height=64, overlap=0, denoise=0.5, seed=0, steps=2, cfg=5.0, sampler_name="Euler")
    assert len(calls) == 3


def test_sd_upscale_node_names_bad_inputs(loaded):
    from diffusers_studio.nodes.sd_upscale import DSSDUpscale

    assert DSSDUpscale.validate_inputs(tile_width=100).startswith("tile_width: 100")
    assert DSSDUpscale.validate_inputs(upscale_method="magic").startswith("upscale_method: 'magic'")
    assert DSSDUpscale.validate_inputs() is True
    model, vae, pos, neg = loaded
    with pytest.raises(ValueError, match="overlap: 40"):
        DSSDUpscale.execute(torch.rand(1, 64, 64, 3), model, pos, neg, vae, tile_width=64, tile_height=64,
                            overlap=40)
