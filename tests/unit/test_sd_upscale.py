"""SD upscale: the tile plan, its blending weights, the resize, and the tile-by-tile img2img pass."""
from __future__ import annotations

import pytest
import torch

from diffusers_studio.nodes.engine import sd_upscale
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle, VAEBundle


@pytest.mark.parametrize(
    "width, height, tile, overlap",
    [(1024, 1024, 512, 64), (1000, 728, 512, 64), (1536, 1024, 1024, 128), (512, 512, 512, 64),
     (384, 1224, 512, 32), (968, 968, 512, 0), (1600, 200, 256, 100)],
)
def test_tiles_cover_the_picture_overlap_as_asked_and_weights_sum_to_one(width, height, tile, overlap):
    plan = sd_upscale.tile_plan(width, height, tile, tile, overlap)
    coverage = torch.zeros(height, width)
    for t in plan:
        assert 0 <= t.x and t.x + t.width <= width and 0 <= t.y and t.y + t.height <= height
        assert (t.width, t.height) == (min(tile, width), min(tile, height))
        coverage[t.y:t.y + t.height, t.x:t.x + t.width] += 1
    assert coverage.min() >= 1  # the whole picture is covered
    for starts, side, size in ((sorted({t.x for t in plan}), plan[0].width, width),
                               (sorted({t.y for t in plan}), plan[0].height, height)):
        assert starts[0] == 0 and starts[-1] + side == size
        for a, b in zip(starts, starts[1:]):
            assert a + side - b >= overlap  # neighbours overlap by at least `overlap`
        # as few tiles as A1111 uses: one fewer could not keep that overlap
        assert len(starts) == (1 if size <= side else -(-(size - overlap) // (side - overlap)))

    weights = sd_upscale.blend_weights(plan, width, height)
    total = torch.zeros(height, width, dtype=torch.float64)
    for t, w in zip(plan, weights):
        assert w.shape == (t.height, t.width) and w.min() >= 0 and w.max() <= 1 + 1e-6
        total[t.y:t.y + t.height, t.x:t.x + t.width] += w.double()
    assert (total - 1).abs().max() <= 1e-5
    # Where only one tile lies, it has the whole say.
    alone = coverage == 1
    for t, w in zip(plan, weights):
        mask = alone[t.y:t.y + t.height, t.x:t.x + t.width]
        assert torch.all(w[mask] > 1 - 1e-6)


def test_feather_is_a_linear_ramp_across_the_overlap():
    plan = sd_upscale.tile_plan(960, 512, 512, 512, 64)
    assert [(t.x, t.y) for t in plan] == [(0, 0), (448, 0)]  # 64 pixels of overlap exactly
    left, right = sd_upscale.blend_weights(plan, 960, 512)
    ramp = right[0, :64]
    assert torch.allclose(ramp, (torch.arange(64) + 0.5) / 64)
    assert torch.allclose(left[0, 448:], 1 - ramp)
    assert torch.all(left[:, :448] == 1) and torch.all(right[:, 64:] == 1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"tile_width": 500}, "tile_width: 500"), ({"tile_height": 32}, "tile_height: 32"),
     ({"overlap": 256}, "overlap: 256"), ({"overlap": -1}, "overlap: -1")],
)
def test_bad_tiling_is_named(kwargs, needle):
    args = {"tile_width": 512, "tile_height": 512, "overlap": 64, **kwargs}
    with pytest.raises(ValueError, match=needle):
        sd_upscale.tile_plan(1024, 1024, **args)


def test_upscaled_size_and_resize():
    assert sd_upscale.upscaled_size(512, 512, 2.0) == (1024, 1024)
    assert sd_upscale.upscaled_size(500, 333, 1.5) == (752, 496)  # on the 8-pixel grid
    with pytest.raises(ValueError, match="scale: 0"):
        sd_upscale.upscaled_size(64, 64, 0)
    image = torch.rand(1, 16, 24, 3, generator=torch.Generator().manual_seed(0))
    for method in sd_upscale.RESIZE_METHODS:
        out = sd_upscale.resize(image, 48, 32, method)
        assert out.shape == (1, 32, 48, 3) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(sd_upscale.resize(image, 48, 32, "nearest-exact")[:, ::2, ::2], image)
    with pytest.raises(ValueError, match="upscale_method: 'magic'"):
        sd_upscale.resize(image, 48, 32, "magic")


@pytest.fixture(scope="module")
def tiny():
    from tiny_models import sd1_pipeline

    pipe = sd1_pipeline()
    model = ModelBundle(
        family="sd1", name="tiny", unet=pipe.unet, scheduler_config=dict(pipe.scheduler.config),
        dtype=torch.float32, latent_scaling_factor=pipe.vae.config.scaling_factor, vae_scale_factor=8,
    )
    pe, ne = pipe.encode_prompt("moss", "cpu", 1, True, "")
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]
    return model, VAEBundle("sd1", "tiny", pipe.vae), Conditioning("sd1", pe, empty), Conditioning("sd1", ne, empty)


def test_redraw_runs_every_tile_with_its_own_seed_and_reports_steps_across_tiles(tiny, monkeypatch):
    model, vae, pos, neg = tiny
    image = torch.rand(1, 96, 128, 3, generator=torch.Generator().manual_seed(1))
    seen_seeds, steps_seen = [], []
    real = sd_upscale.sample

    def spy(*args, **kwargs):
        seen_seeds.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sd_upscale, "sample", spy)
    out = sd_upscale.redraw_tiles(model, vae, pos, neg, image, tile_width=64, tile_height=64, overlap=16,
                                  denoise=0.5, seed=10, steps=4, cfg=5.0, sampler_name="Euler",
                                  on_step=lambda s, total, x0: steps_seen.append((s, total)))
    plan = sd_upscale.tile_plan(128, 96, 64, 64, 16)
    assert len(plan) == 6 and seen_seeds == list(range(10, 16))
    assert out.shape == (1, 96, 128, 3) and out.min() >= 0 and out.max() <= 1
    assert steps_seen == [(s, 12) for s in range(12)]  # 2 img2img steps per tile, counted across the 6 tiles
    assert (out - image).abs().mean() > 1e-3  # it redrew something


def test_cancel_stops_between_tiles(tiny):
    model, vae, pos, neg = tiny
    image = torch.rand(1, 64, 128, 3, generator=torch.Generator().manual_seed(2))
    calls = []

    def stop():
        calls.append(1)
        if len(calls) > 2:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        sd_upscale.redraw_tiles(model, vae, pos, neg, image, tile_width=64, tile_height=64, overlap=0,
                                denoise=0.5, seed=0, steps=2, cfg=5.0, sampler_name="Euler", should_stop=stop)
    # tile 1: one check before it, one per step (1 step at denoise 0.5); the check before tile 2 cancels
    assert len(calls) == 3
