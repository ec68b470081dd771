"""Seamless tiling: circular padding for one run, the cached modules restored bit-exact."""
from __future__ import annotations

import pytest
import torch

from diffusers_studio.nodes.engine import seamless, vae_codec
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle, VAEBundle
from diffusers_studio.nodes.engine.sampling import sample

SIZE = 96  # pixels; 12x12 latents
BLOCK = 16


@pytest.fixture(scope="module")
def pipe():
    from tiny_models import sd1_pipeline

    pipe = sd1_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _bundles(pipe):
    model = ModelBundle(
        family="sd1", name="tiny", unet=pipe.unet, scheduler_config=dict(pipe.scheduler.config),
        dtype=torch.float32, latent_scaling_factor=pipe.vae.config.scaling_factor, vae_scale_factor=8,
    )
    return model, VAEBundle("sd1", "tiny", pipe.vae)


def _prompts(pipe):
    pe, ne = pipe.encode_prompt("a brick wall", "cpu", 1, True, "")
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]
    return Conditioning("sd1", pe, empty), Conditioning("sd1", ne, empty)


def _snapshot(module: torch.nn.Module) -> list:
    """Everything that could differ after a patch: each module's own attributes and every tensor."""
    attrs = [(name, sorted(vars(m).keys()), getattr(m, "padding_mode", None)) for name, m in module.named_modules()]
    tensors = {k: v.clone() for k, v in module.state_dict().items()}
    return [attrs, tensors]


def _same(a: list, b: list) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_patch_wraps_inside_and_restores_exactly_after_also_on_error(pipe):
    vae = pipe.vae
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    before = _snapshot(vae)
    with torch.no_grad():
        plain = vae.decode(z).sample
        with seamless.circular_padding(vae, "both"):
            wrapped = vae.decode(z).sample
            # Translation-equivariant on a torus: shifting the latent by one cell shifts the picture by 8 pixels.
            shifted = vae.decode(torch.roll(z, 1, dims=-1)).sample
        again = vae.decode(z).sample
    assert (wrapped - plain).abs().max() > 1e-3  # the patch changed the edges
    assert (torch.roll(wrapped, 8, dims=-1) - shifted).abs().max() <= 1e-4
    assert torch.equal(again, plain) and _same(_snapshot(vae), before)
    assert not any("_conv_forward" in vars(m) for m in vae.modules())

    with pytest.raises(RuntimeError, match="boom"):
        with seamless.circular_padding(vae, "x only"):
            raise RuntimeError("boom")
    assert _same(_snapshot(vae), before)


def test_one_axis_wraps_only_that_axis(pipe):
    vae = pipe.vae
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), seamless.circular_padding(vae, "x only"):
        out = vae.decode(z).sample
        x_shift = vae.decode(torch.roll(z, 1, dims=-1)).sample
        y_shift = vae.decode(torch.roll(z, 1, dims=-2)).sample
    assert (torch.roll(out, 8, dims=-1) - x_shift).abs().max() <= 1e-4
    assert (torch.roll(out, 8, dims=-2) - y_shift).abs().max() > 1e-2  # the y edges are padded with zeros


def test_bad_axes_is_named():
    with pytest.raises(ValueError, match=r"axes: 'diagonal' is not one of"):
        seamless.check_axes("diagonal")


def test_values_carry_the_patch_and_the_inputs_stay_plain(pipe):
    model, vae = _bundles(pipe)
    tiled_model, tiled_vae = seamless.with_seamless(model, vae, "y only")
    assert model.patches == () and vae.patches == ()
    assert seamless.seamless_of(tiled_model) is seamless.seamless_of(tiled_vae)
    again, _ = seamless.with_seamless(tiled_model, tiled_vae, "both")
    assert [p.axes for p in again.patches] == ["both"]  # replaced, not stacked


def _smooth_vae():
    """The tiny VAE with a decoder that only averages (3x3 means over all channels, attention off).

    A random decoder paints pixel-scale noise in which any two columns are as unrelated as the
    picture's two edges, so no test could see a seam. This one turns latents into a smooth picture
    (neighbouring columns alike, as in a real model's output) while keeping every padded convolution
    of the real architecture, so the seam shows exactly when the padding does not wrap.
    """
    from tiny_models import tiny_vae

    vae = tiny_vae()
    with torch.no_grad():
        for name, layer in vae.decoder.named_modules():
            if isinstance(layer, torch.nn.Conv2d):
                k = layer.weight
                k.fill_(1.0 / (k.shape[1] * k.shape[2] * k.shape[3]))
                if layer.bias is not None:
                    layer.bias.zero_()
            elif isinstance(layer, torch.nn.Linear) and ".to_out." in f".{name}.":
                layer.weight.zero_()
                layer.bias.zero_()
    return vae


def _seam_ratio(image: torch.Tensor) -> float:
    """Mean |left column - right column| over the mean difference between neighbouring columns."""
    seam = (image[:, :, 0] - image[:, :, -1]).abs().mean()
    interior = (image[:, :, 1:] - image[:, :, :-1]).abs().mean()
    return float(seam / interior)


def test_left_and_right_edges_of_the_output_meet(pipe):
    model, _ = _bundles(pipe)
    vae = VAEBundle("sd1", "smooth", _smooth_vae())
    positive, negative = _prompts(pipe)
    tiled_model, tiled_vae = seamless.with_seamless(model, vae, "both")
    unet_before = _snapshot(pipe.unet)
    ratios = {}
    for label, (m, v) in {"plain": (model, vae), "tiled": (tiled_model, tiled_vae)}.items():
        latent = sample(m, positive, negative, {"samples": torch.zeros(2, 4, SIZE // 8, SIZE // 8)}, seed=3,
                        steps=4, cfg=5.0, sampler_name="Euler")
        image = vae_codec.decode(v, latent["samples"])
        assert 0.05 < float(image.std()) and float(image.clamp(0.01, 0.99).eq(image).float().mean()) > 0.75  # not saturated
        ratios[label] = _seam_ratio(image)
    # Across the wrap the tiled picture changes about as much as between any two neighbouring columns;
    # the plain picture's edges are unrelated.
    assert ratios["tiled"] < 1.5, ratios
    assert ratios["plain"] > 3 * ratios["tiled"], ratios
    assert _same(_snapshot(pipe.unet), unet_before)


def test_cancel_mid_run_restores_the_unet(pipe):
    model, vae = _bundles(pipe)
    positive, negative = _prompts(pipe)
    tiled_model, _ = seamless.with_seamless(model, vae, "both")
    before = _snapshot(pipe.unet)
    calls = []

    def stop():
        calls.append(1)
        if len(calls) == 2:
            assert any("_conv_forward" in vars(m) for m in pipe.unet.modules())  # patched while running
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        sample(tiled_model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, seed=0, steps=3, cfg=5.0,
               sampler_name="Euler", should_stop=stop)
    assert _same(_snapshot(pipe.unet), before)
    assert not any("_conv_forward" in vars(m) for m in pipe.unet.modules())
