"""DSVAEDecode / DSVAEEncode plan memory with ComfyUI: slices that fit, tiled retry on out-of-memory.

The free-memory figure is ComfyUI's (`comfy_bridge.free_memory_bytes`); on
this CPU it is the machine's RAM, far more than tiny latents need, so the
slicing tests set it to a known number of images instead.
"""
from __future__ import annotations

import pytest
import torch

MODEL = "tiny-sd15.safetensors"


@pytest.fixture
def vae(models_dir):
    from diffusers_studio.nodes.loaders import DSLoadModel

    return DSLoadModel.execute(MODEL, "float32").args[2]


def _count_calls(monkeypatch, module, method: str) -> list:
    sizes = []
    real = getattr(module, method)
    monkeypatch.setattr(module, method, lambda x: (sizes.append(len(x)), real(x))[1])
    return sizes


@pytest.mark.parametrize("images_that_fit, expected", [(2, [2, 2, 1]), (10, [5]), (0, [1, 1, 1, 1, 1])])
def test_decode_and_encode_slice_the_batch_to_what_fits(vae, monkeypatch, images_that_fit, expected):
    from diffusers_studio.nodes import comfy_bridge
    from diffusers_studio.nodes.engine import vae_codec
    from diffusers_studio.nodes.vae import DSVAEDecode, DSVAEEncode

    latents = torch.randn(5, 4, 8, 8)
    per_image = vae_codec.decode_bytes_per_image(8, 8, torch.float32)
    reference = vae_codec.decode(vae, latents, batch_per_call=1)
    monkeypatch.setattr(comfy_bridge, "free_memory_bytes", lambda device=None: images_that_fit * per_image)
    decodes = _count_calls(monkeypatch, vae.vae, "decode")
    images = DSVAEDecode.execute(vae, {"samples": latents}).args[0]
    assert decodes == expected
    assert (images - reference).abs().max() <= 1e-5

    per_pixel_image = vae_codec.encode_bytes_per_image(64, 64, torch.float32)
    monkeypatch.setattr(comfy_bridge, "free_memory_bytes", lambda device=None: images_that_fit * per_pixel_image)
    encodes = _count_calls(monkeypatch, vae.vae, "encode")
    DSVAEEncode.execute(vae, images)
    assert encodes == expected


def test_out_of_memory_retries_tiled(vae, monkeypatch, caplog):
    from diffusers_studio.nodes.engine import vae_codec
    from diffusers_studio.nodes.vae import DSVAEDecode

    latents = torch.randn(1, 4, 16, 16)
    real = vae_codec.decode
    tiled_calls = []

    def decode(*args, tiled=False, **kwargs):
        tiled_calls.append(tiled)
        if not tiled:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, tiled=tiled, **kwargs)

    monkeypatch.setattr(vae_codec, "decode", decode)
    images = DSVAEDecode.execute(vae, {"samples": latents}, False, 128).args[0]
    assert tiled_calls == [False, True]
    assert images.shape == (1, 128, 128, 3)
    assert "retrying tiled" in caplog.text
