"""The inpaint nodes with ComfyUI importable: schemas, a whole graph, bad input.

The graph runs the nodes' `execute` as ComfyUI would (Load Diffusers Model ->
Diffusers Inpaint -> Diffusers Sampler -> Diffusers VAE Decode -> Composite),
on an ordinary and on an inpainting tiny checkpoint loaded from single files.
"""
from __future__ import annotations

import pytest
import torch

SIZE = 64
INPAINT_CKPT = "tiny-sd15-inpainting.safetensors"


def _nodes():
    from diffusers_studio.nodes import inpaint

    return inpaint


@pytest.fixture(scope="module")
def inpaint_models(models_dir):
    import folder_paths
    import ldm_export
    import tiny_models

    path = models_dir / "checkpoints" / INPAINT_CKPT
    if not path.exists():
        ldm_export.save_sd1_single_file(tiny_models.tiny_sd1_components(0, in_channels=9), path)
    folder_paths.filename_list_cache.clear()
    return models_dir


def _load(name):
    from diffusers_studio.nodes.loaders import DSLoadModel

    return DSLoadModel.execute(name, "float32").args


def _encode(te, text):
    from diffusers_studio.nodes.encode import DSTextEncode

    return DSTextEncode.execute(te, text, 1).args[0]


def _image_and_mask():
    y, x = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2], -1)[None]
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 24:56, 16:48] = 1.0
    return image, mask


def _graph(name, denoise=1.0, **inpaint_kwargs):
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    nodes = _nodes()
    model, te, vae = _load(name)
    image, mask = _image_and_mask()
    latent, used_mask = nodes.DSInpaint.execute(image, mask, vae, model, **inpaint_kwargs).args
    out = DSSampler.execute(model, _encode(te, "a red door"), _encode(te, "blurry"), latent, seed=5, steps=3,
                            cfg=6.0, sampler_name="Euler a", schedule="normal", denoise=denoise).args[0]
    decoded = DSVAEDecode.execute(vae, out).args[0]
    return image, used_mask, nodes.DSInpaintComposite.execute(image, decoded, used_mask).args[0]


def test_schemas_have_descriptions_and_tooltips():
    for node in _nodes().NODES:
        schema = node.define_schema()
        assert schema.node_id.startswith("DSInpaint") and schema.category == "Diffusers Studio/inpaint"
        assert schema.description and schema.display_name
        for socket in list(schema.inputs) + list(schema.outputs):
            assert socket.tooltip, f"{schema.node_id}.{socket.id or socket.display_name} has no tooltip"


@pytest.mark.parametrize("name", ["tiny-sd15.safetensors", INPAINT_CKPT])
def test_graph_repaints_inside_and_keeps_outside_exactly(inpaint_models, name):
    image, used_mask, result = _graph(name, blur=2.0)
    outside = (used_mask == 0)[..., None].expand_as(image)
    assert torch.equal(result[outside], image[outside])
    assert (result[0, 40, 32] - image[0, 40, 32]).abs().max() > 1e-3


def test_strength_zero_gives_the_image_back(inpaint_models):
    image, _, result = _graph("tiny-sd15.safetensors", denoise=0.0, blur=0.0)
    # Outside exact; inside only the VAE round trip of the untouched latents.
    assert torch.equal(result[:, :, :8], image[:, :, :8])


def test_fill_is_validated():
    assert "fill" in _nodes().DSInpaint.validate_inputs("smear")
    assert _nodes().DSInpaint.validate_inputs("blurred") is True


def test_crop_paste_back_full_resolution_graph(inpaint_models):
    nodes = _nodes()
    model, _, _ = _load("tiny-sd15.safetensors")
    image, mask = _image_and_mask()
    crop_image, crop_mask, crop = nodes.DSInpaintCropToMask.execute(image, mask, 4, 0, 0, model).args
    assert crop_image.shape == (1, 256, 256, 3)  # the tiny UNet's native size: sample_size 32 x 8
    back = nodes.DSInpaintPasteBack.execute(crop, torch.zeros_like(crop_image), crop_mask).args[0]
    assert back.shape == image.shape
    assert torch.equal(back[:, :, :8], image[:, :, :8])
    assert back[0, 40, 32].abs().max() < 1e-3  # the generated (black) pixels inside the mask


def test_crop_without_model_or_size_is_a_clear_error():
    image, mask = _image_and_mask()
    with pytest.raises(ValueError, match="width/height: 0x0"):
        _nodes().DSInpaintCropToMask.execute(image, mask, 4, 0, 0, None)
    crop_image, _, _ = _nodes().DSInpaintCropToMask.execute(image, mask, 4, 104, 50, None).args
    assert crop_image.shape == (1, 48, 104, 3)


def test_mask_batch_mismatch_is_a_clear_error(inpaint_models):
    model, _, vae = _load("tiny-sd15.safetensors")
    image, mask = _image_and_mask()
    with pytest.raises(ValueError, match="mask has a batch of 2"):
        _nodes().DSInpaint.execute(image.repeat(3, 1, 1, 1), mask.repeat(2, 1, 1), vae, model)


def _inpaint_reference(bundles, photo, mask_photo, *, seed, steps, cfg, sampler, strength):
    from diffusers import StableDiffusionInpaintPipeline

    from diffusers_studio.nodes.engine.schedulers import make_scheduler

    model, te, vae = bundles
    pipe = StableDiffusionInpaintPipeline(
        unet=model.unet, vae=vae.vae, scheduler=make_scheduler(model.scheduler_config, sampler, "normal"),
        text_encoder=te.text_encoders[0], tokenizer=te.tokenizers[0],
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt="a red door", negative_prompt="blurry", image=photo, mask_image=mask_photo,
                height=SIZE, width=SIZE, strength=strength, num_inference_steps=steps, guidance_scale=cfg,
                generator=torch.Generator().manual_seed(seed), output_type="np").images


@pytest.mark.parametrize(
    "name,strength",
    [("tiny-sd15.safetensors", 0.75), ("tiny-sd15.safetensors", 1.0), (INPAINT_CKPT, 0.75), (INPAINT_CKPT, 1.0)],
)
def test_graph_matches_the_inpaint_pipeline_fed_pil_image_and_mask(inpaint_models, name, strength):
    """Diffusers Inpaint (latent_sampling "sample", the default; no grow, no feather, and for the
    9-channel checkpoint no blending, as the pipeline) -> Sampler -> Decode equals
    StableDiffusionInpaintPipeline(image=PIL, mask_image=PIL) with the same seed."""
    import numpy as np
    import pil_inputs

    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    model, te, vae = _load(name)
    photo, mask_photo = pil_inputs.picture(5), pil_inputs.mask_picture()
    latent, _ = _nodes().DSInpaint.execute(
        pil_inputs.as_image(photo), pil_inputs.as_mask(mask_photo), vae, model, grow=0, blur=0.0,
        blend_unmasked=(name != INPAINT_CKPT),
    ).args
    out = DSSampler.execute(model, _encode(te, "a red door"), _encode(te, "blurry"), latent, seed=5, steps=4,
                            cfg=6.0, sampler_name="Euler a", schedule="normal", denoise=strength).args[0]
    decoded = DSVAEDecode.execute(vae, out).args[0]
    expected = _inpaint_reference((model, te, vae), photo, mask_photo, seed=5, steps=4, cfg=6.0,
                                  sampler="Euler a", strength=strength)
    diff = float(np.abs(decoded.numpy() - expected).max())
    assert diff <= 1e-4, f"max abs difference {diff}"


def test_latent_sampling_is_validated_and_mode_is_deterministic(inpaint_models):
    import pil_inputs

    assert "latent_sampling" in _nodes().DSInpaint.validate_inputs("original", "argmax")
    model, _, vae = _load(INPAINT_CKPT)
    photo, mask_photo = pil_inputs.as_image(pil_inputs.picture(5)), pil_inputs.as_mask(pil_inputs.mask_picture())
    sampled, _ = _nodes().DSInpaint.execute(photo, mask_photo, vae, model).args
    mode, _ = _nodes().DSInpaint.execute(photo, mask_photo, vae, model, latent_sampling="mode").args
    assert "ds_posterior" in sampled and "ds_masked_posterior" in sampled
    assert "ds_posterior" not in mode and "ds_masked_posterior" not in mode
    assert torch.equal(sampled["samples"], mode["samples"])  # both carry the mean; the sampler draws
