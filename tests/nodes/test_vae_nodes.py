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
    """The nodes slice as planned, and a slice plan changes nothing but the slicing.

    The comparison is exact: the node's images equal the engine's decode with
    the same slice size bit for bit. Whether slicing itself changes pixels is
    the next test's question (it does, by float32 rounding only).
    """
    from diffusers_studio.nodes import comfy_bridge
    from diffusers_studio.nodes.engine import vae_codec
    from diffusers_studio.nodes.vae import DSVAEDecode, DSVAEEncode

    latents = torch.randn(5, 4, 8, 8)
    per_image = vae_codec.decode_bytes_per_image(8, 8, torch.float32)
    reference = vae_codec.decode(vae, latents, batch_per_call=expected[0])
    monkeypatch.setattr(comfy_bridge, "free_memory_bytes", lambda device=None: images_that_fit * per_image)
    decodes = _count_calls(monkeypatch, vae.vae, "decode")
    images = DSVAEDecode.execute(vae, {"samples": latents}).args[0]
    assert decodes == expected
    assert torch.equal(images, reference)

    encoded_reference = vae_codec.encode(vae, images, batch_per_call=expected[0])
    per_pixel_image = vae_codec.encode_bytes_per_image(64, 64, torch.float32)
    monkeypatch.setattr(comfy_bridge, "free_memory_bytes", lambda device=None: images_that_fit * per_pixel_image)
    encodes = _count_calls(monkeypatch, vae.vae, "encode")
    encoded = DSVAEEncode.execute(vae, images).args[0]["samples"]
    assert encodes == expected
    assert torch.equal(encoded, encoded_reference)


def test_slicing_the_batch_changes_only_float32_rounding(vae):
    """Decoding per image or the whole batch at once is the same computation.

    In float32 the two differ by about 1e-5 on 0..1 pixels: a convolution over a
    batch of 5 and one over a batch of 1 sum in different orders (oneDNN picks
    its kernels by shape), and the 1e-5 sits at the rounding level of values
    that pass through a few dozen layers. Run in float64 the same two ways agree
    to within one float32 step of the (float32) output, which shows the slicing
    itself adds no error; a bound on the float32 difference would only measure
    this CPU's kernels.
    """
    import copy
    import dataclasses

    from diffusers_studio.nodes.engine import vae_codec

    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    vae64 = dataclasses.replace(vae, vae=copy.deepcopy(vae.vae).double())
    whole = vae_codec.decode(vae64, latents.double(), batch_per_call=5)
    sliced = vae_codec.decode(vae64, latents.double(), batch_per_call=1)
    assert (whole - sliced).abs().max() <= 1.2e-7  # one float32 step at 1.0
    pixels = torch.rand(5, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    assert (vae_codec.encode(vae64, pixels, batch_per_call=5)
            - vae_codec.encode(vae64, pixels, batch_per_call=1)).abs().max() <= 1e-6  # float32 steps of latents ~4


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


def test_latent_sampling_carries_the_posterior_or_only_the_mean(vae):
    """sample: the mean in "samples" (native nodes see an ordinary latent) and the posterior for
    the sampler; mode: the mean alone. Tiled encoding carries a posterior of the same shape."""
    from diffusers_studio.nodes.engine import posterior
    from diffusers_studio.nodes.vae import DSVAEEncode

    pixels = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(4))
    sampled = DSVAEEncode.execute(vae, pixels).args[0]
    mode = DSVAEEncode.execute(vae, pixels, False, 512, "mode").args[0]
    assert set(mode) == {"samples"} and set(sampled) == {"samples", posterior.KEY}
    assert torch.equal(sampled["samples"], mode["samples"])
    drawn_from = sampled[posterior.KEY]
    assert drawn_from.std.shape == (2, 4, 8, 8) and bool((drawn_from.std > 0).all())
    tiled = DSVAEEncode.execute(vae, pixels, True, 128).args[0]
    assert tiled[posterior.KEY].std.shape == (2, 4, 8, 8)
    assert "latent_sampling" in DSVAEEncode.validate_inputs("argmax")
    assert DSVAEEncode.validate_inputs("mode") is True
    with pytest.raises(ValueError, match="latent_sampling"):
        DSVAEEncode.execute(vae, pixels, False, 512, "argmax")
