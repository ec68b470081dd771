"""IMAGE <-> LATENT through the tiny VAE, against diffusers' own maths."""
from __future__ import annotations

import pytest
import torch

from diffusers_studio.nodes.engine import vae_codec
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle, VAEBundle
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.schedulers import make_scheduler

TOL = 1e-4


@pytest.fixture(scope="module")
def vae():
    from tiny_models import tiny_vae

    return VAEBundle(family="sd1", name="tiny", vae=tiny_vae())


def _images(batch=2, h=64, w=64, c=3, seed=0):
    return torch.rand(batch, h, w, c, generator=torch.Generator().manual_seed(seed))


def test_encode_is_the_posterior_mode(vae):
    images = _images()
    latents = vae_codec.encode(vae, images)
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
    with torch.no_grad():
        ref = vae.vae.encode(images.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    assert (latents - ref).abs().max() <= TOL
    assert torch.equal(vae_codec.encode(vae, images), latents)  # deterministic


def test_decode_matches_diffusers_postprocess(vae):
    from diffusers.image_processor import VaeImageProcessor

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    images = vae_codec.decode(vae, latents)
    assert images.shape == (2, 64, 64, 3) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        raw = vae.vae.decode(latents).sample
    ref = VaeImageProcessor(vae_scale_factor=8).postprocess(raw, output_type="pt").permute(0, 2, 3, 1)
    assert (images - ref).abs().max() <= TOL


def test_sample_then_decode_matches_pipeline_images():
    """End to end: engine sample + decode == StableDiffusionPipeline(output_type="np")."""
    from tiny_models import sd1_pipeline

    pipe = sd1_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pe, ne = pipe.encode_prompt("a red house", "cpu", 1, True, "fog")
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]
    model = ModelBundle(
        family="sd1", name="tiny", unet=pipe.unet, scheduler_config=dict(pipe.scheduler.config),
        dtype=torch.float32, latent_scaling_factor=pipe.vae.config.scaling_factor, vae_scale_factor=8,
    )
    pipe.scheduler = make_scheduler(model.scheduler_config, "DPM++ 2M", "karras")
    ref = pipe(
        prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=4, guidance_scale=6.0,
        generator=torch.Generator().manual_seed(5), height=64, width=64, output_type="np",
    ).images
    latent = sample(model, Conditioning("sd1", pe, empty), Conditioning("sd1", ne, empty),
                    {"samples": torch.zeros(1, 4, 8, 8)}, seed=5, steps=4, cfg=6.0,
                    sampler_name="DPM++ 2M", schedule="karras")
    ours = vae_codec.decode(VAEBundle("sd1", "tiny", pipe.vae), latent["samples"])
    assert (ours - torch.from_numpy(ref)).abs().max() <= TOL


def test_alpha_is_dropped_and_grey_is_expanded(vae):
    rgb = _images(batch=1)
    rgba = torch.cat([rgb, torch.rand(1, 64, 64, 1)], dim=-1)
    assert torch.equal(vae_codec.encode(vae, rgba), vae_codec.encode(vae, rgb))
    grey = rgb[..., :1]
    assert torch.equal(vae_codec.encode(vae, grey), vae_codec.encode(vae, grey.repeat(1, 1, 1, 3)))
    with pytest.raises(ValueError, match="2 channels"):
        vae_codec.encode(vae, rgb[..., :2])


def test_size_not_divisible(vae):
    with pytest.raises(ValueError, match=r"60x64.*divisible by 8.*resize or crop.*56x64"):
        vae_codec.encode(vae, _images(batch=1, h=64, w=60))


def test_decode_channel_mismatch(vae):
    with pytest.raises(ValueError, match=r"16 channels.*'tiny' \(sd1\) expects 4"):
        vae_codec.decode(vae, torch.zeros(1, 16, 8, 8))


def test_bad_shapes(vae):
    with pytest.raises(ValueError, match="IMAGE"):
        vae_codec.encode(vae, torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="LATENT"):
        vae_codec.decode(vae, torch.zeros(4, 8, 8))


def test_batches_are_processed_in_chunks(vae):
    images = _images(batch=5)
    whole = vae_codec.encode(vae, images)
    one_by_one = torch.cat([vae_codec.encode(vae, images[i : i + 1]) for i in range(5)])
    assert (whole - one_by_one).abs().max() <= TOL


@pytest.mark.parametrize("batch_per_call", [1, 2, 5])
def test_slicing_sends_that_many_images_per_call_and_changes_nothing(vae, batch_per_call, monkeypatch):
    images = _images(batch=5)
    latents = vae_codec.encode(vae, images)
    reference = vae_codec.decode(vae, latents)
    seen = []
    real_encode, real_decode = vae.vae.encode, vae.vae.decode
    monkeypatch.setattr(vae.vae, "encode", lambda x: (seen.append(("encode", len(x))), real_encode(x))[1])
    monkeypatch.setattr(vae.vae, "decode", lambda z: (seen.append(("decode", len(z))), real_decode(z))[1])
    sliced_latents = vae_codec.encode(vae, images, batch_per_call=batch_per_call)
    sliced = vae_codec.decode(vae, latents, batch_per_call=batch_per_call)
    sizes = [len(images[i : i + batch_per_call]) for i in range(0, 5, batch_per_call)]
    assert seen == [("encode", n) for n in sizes] + [("decode", n) for n in sizes]
    assert (sliced_latents - latents).abs().max() <= TOL
    assert (sliced - reference).abs().max() <= TOL


def test_images_per_call_follows_free_memory():
    per_image = vae_codec.decode_bytes_per_image(64, 64, torch.float16)
    assert per_image == 2178 * 64 * 64 * 64 * 2  # ComfyUI's planning figure: ~1.1 GB for a 512x512 SD image
    assert vae_codec.images_per_call(8, per_image, free_bytes=3 * per_image + 1) == 3
    assert vae_codec.images_per_call(8, per_image, free_bytes=per_image // 2) == 1  # always makes progress
    assert vae_codec.images_per_call(2, per_image, free_bytes=100 * per_image) == 2
    assert vae_codec.encode_bytes_per_image(512, 512, torch.float32) == 1767 * 512 * 512 * 4


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_batch_per_call_is_named(vae, bad):
    with pytest.raises(ValueError, match=r"batch_per_call must be a whole number of images, 1 or more"):
        vae_codec.decode(vae, torch.zeros(1, 4, 8, 8), batch_per_call=bad)


# ------------------------------------------------------------------ tiling


def test_tiled_single_tile_equals_untiled(vae):
    images = _images(batch=1)
    assert torch.equal(vae_codec.encode(vae, images, tiled=True, tile_size=512), vae_codec.encode(vae, images))
    latents = torch.randn(1, 4, 8, 8)
    assert torch.equal(vae_codec.decode(vae, latents, tiled=True, tile_size=512), vae_codec.decode(vae, latents))


def test_tiled_runs_and_leaves_the_vae_alone(vae):
    module = vae.vae
    flags = (module.use_tiling, module.use_slicing, module.tile_sample_min_size, module.tile_latent_min_size)
    params = {k: v.clone() for k, v in module.state_dict().items()}
    latents = vae_codec.encode(vae, _images(batch=1, h=128, w=96), tiled=True, tile_size=64)
    assert latents.shape == (1, 4, 16, 12) and torch.isfinite(latents).all()
    images = vae_codec.decode(vae, latents, tiled=True, tile_size=64)
    assert images.shape == (1, 128, 96, 3) and 0 <= images.min() and images.max() <= 1
    assert (module.use_tiling, module.use_slicing, module.tile_sample_min_size, module.tile_latent_min_size) == flags
    assert all(torch.equal(params[k], v) for k, v in module.state_dict().items())


def test_tile_blending_is_exact_for_a_local_function():
    """For a purely local op (nearest upsampling) tiling must not change the result."""
    z = torch.randn(2, 3, 21, 13)

    def up(t):
        return t.repeat_interleave(8, -1).repeat_interleave(8, -2)

    tiled = vae_codec._tiled(z, up, 8, 8.0, 3)
    assert (tiled - up(z)).abs().max() <= 1e-6


def test_encode_tiles_start_on_the_latent_grid():
    """A tile size whose natural stride is off the 8-pixel grid (72 -> 54) is aligned."""
    import torch.nn.functional as F

    x = torch.randn(1, 3, 200, 136)
    tiled = vae_codec._tiled(x, lambda t: F.avg_pool2d(t, 8), 72, 1 / 8, 3, align=8)
    assert (tiled - F.avg_pool2d(x, 8)).abs().max() <= 1e-6


def test_bad_tile_size(vae):
    with pytest.raises(ValueError, match="tile_size"):
        vae_codec.decode(vae, torch.zeros(1, 4, 8, 8), tiled=True, tile_size=20)
