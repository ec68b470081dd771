"""FLUX.1 Canny/Depth dev through the node graph against diffusers' control pipelines.

Load Diffusers Model (a FluxControlPipeline folder: the transformer takes 128
packed channels, latents + control latents) -> Diffusers Flux Control Image
-> Diffusers Sampler -> Diffusers VAE Decode, called as ComfyUI calls them.
The reference is FluxControlPipeline / FluxControlImg2ImgPipeline /
FluxControlInpaintPipeline built from the very same loaded modules and called
as their docs show (PIL control_image, PIL image), same seed, float32, max abs
difference at most 1e-4. The pipelines sample the control image's VAE
posterior with the generator before the noise; the graph draws it there too.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dit_export
import dit_graph
from dit_graph import encode, load
import pil_inputs
import tiny_dit

TOL = 1e-4
SIZE = 64  # an 8x8 latent: 4x4 packed Flux tokens
PROMPT = "a red door"


@pytest.fixture(scope="module")
def control_models(models_dir):
    return dit_graph.save_folders(models_dir, {
        "tiny-flux-control": lambda: tiny_dit.flux_control_pipeline(0),
        "tiny-flux-dev": lambda: tiny_dit.flux_pipeline(0, dev=True),
        "tiny-sd3": lambda: tiny_dit.sd3_pipeline(0),
    })


def _control_picture():
    """An edge-map-like picture: thin bright lines on black."""
    from PIL import Image

    m = np.zeros((SIZE, SIZE, 3), np.uint8)
    m[::9, :] = 255
    m[:, 5::13] = 255
    return Image.fromarray(m)


def _sample(model, text_encoder, latent, *, seed, steps=4, denoise=1.0, guidance=None):
    from diffusers_studio.nodes.flux_guidance import DSFluxGuidance
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    positive = encode(text_encoder, PROMPT)
    if guidance is not None:
        positive = DSFluxGuidance.execute(positive, guidance).args[0]
    out = DSSampler.execute(model, positive, None, latent, seed, steps, 1.0, "Euler", "normal", denoise).args[0]
    return out


def _decode(vae, latent):
    from diffusers_studio.nodes.vae import DSVAEDecode

    return DSVAEDecode.execute(vae, latent).args[0]


def _close(got: torch.Tensor, expected: np.ndarray) -> None:
    got = got.numpy()
    assert got.shape == expected.shape, (got.shape, expected.shape)
    diff = float(np.abs(got - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"


@pytest.mark.parametrize("batch", [1, 2])
def test_txt2img_matches_flux_control_pipeline(control_models, batch):
    """The family's default guidance (10) with no Flux Guidance node; picture i uses seed + i."""
    from diffusers import FluxControlPipeline

    from diffusers_studio.nodes.flux_control import DSFluxControlImage

    model, text_encoder, vae = bundles = load("tiny-flux-control")
    control = _control_picture()
    empty = {"samples": torch.zeros(batch, 16, SIZE // 8, SIZE // 8)}
    latent = DSFluxControlImage.execute(empty, vae, pil_inputs.as_image(control)).args[0]
    assert "ds_hooks" not in empty  # the input latent is left as it was
    images = _decode(vae, _sample(model, text_encoder, latent, seed=7))
    expected = tiny_dit.pipeline_of(FluxControlPipeline, bundles)(
        prompt=PROMPT, control_image=control, height=SIZE, width=SIZE, num_inference_steps=4, guidance_scale=10.0,
        num_images_per_prompt=batch, generator=[torch.Generator().manual_seed(7 + i) for i in range(batch)],
        output_type="np",
    ).images
    _close(images, expected)


def test_img2img_matches_flux_control_img2img_pipeline(control_models):
    """The control image's posterior is drawn first, then the picture's, then the noise."""
    from diffusers import FluxControlImg2ImgPipeline

    from diffusers_studio.nodes.flux_control import DSFluxControlImage
    from diffusers_studio.nodes.vae import DSVAEEncode

    model, text_encoder, vae = bundles = load("tiny-flux-control")
    photo, control = pil_inputs.picture(5), _control_picture()
    encoded = DSVAEEncode.execute(vae, pil_inputs.as_image(photo)).args[0]
    latent = DSFluxControlImage.execute(encoded, vae, pil_inputs.as_image(control)).args[0]
    images = _decode(vae, _sample(model, text_encoder, latent, seed=3, denoise=0.75, guidance=30.0))
    expected = tiny_dit.pipeline_of(FluxControlImg2ImgPipeline, bundles)(
        prompt=PROMPT, image=photo, control_image=control, height=SIZE, width=SIZE, strength=0.75,
        num_inference_steps=4, guidance_scale=30.0, generator=torch.Generator().manual_seed(3), output_type="np",
    ).images
    _close(images, expected)


def test_a_larger_control_image_is_resized_to_the_latent(control_models):
    from diffusers_studio.nodes.flux_control import DSFluxControlImage

    _, _, vae = load("tiny-flux-control")
    big = pil_inputs.as_image(_control_picture().resize((2 * SIZE, 2 * SIZE)))
    latent = DSFluxControlImage.execute({"samples": torch.zeros(1, 16, 8, 8)}, vae, big).args[0]
    (hook,) = latent["ds_hooks"]
    assert tuple(hook.mean.shape) == (1, 16, 8, 8)


def test_mistakes_name_the_node_the_model_and_the_fix(control_models):
    from diffusers_studio.nodes.flux_control import DSFluxControlImage

    control_model, control_text, control_vae = load("tiny-flux-control")
    dev_model, dev_text, _ = load("tiny-flux-dev")
    sd3_model, sd3_text, sd3_vae = load("tiny-sd3")
    image = pil_inputs.as_image(_control_picture())
    empty = {"samples": torch.zeros(1, 16, 8, 8)}
    latent = DSFluxControlImage.execute(empty, control_vae, image).args[0]

    with pytest.raises(ValueError, match=r"is FLUX\.1 Canny/Depth dev .*needs a control image.*Diffusers Flux "
                                         r"Control Image"):
        _sample(control_model, control_text, empty, seed=1, steps=1)
    with pytest.raises(ValueError, match=r"made by Diffusers Flux Control Image for FLUX\.1 Canny/Depth dev, but "
                                         r".* is Flux\.1 dev"):
        _sample(dev_model, dev_text, latent, seed=1, steps=1)
    with pytest.raises(ValueError, match=r"only FLUX\.1 Canny dev and Depth dev take, but model 'tiny-sd3'"):
        _sample(sd3_model, sd3_text, latent, seed=1, steps=1)
    with pytest.raises(ValueError, match=r"vae: 'tiny-sd3' is a sd3 VAE.*Flux VAE"):
        DSFluxControlImage.execute(empty, sd3_vae, image)
    with pytest.raises(ValueError, match=r"latent: it has 4 channels, the Flux VAE makes 16"):
        DSFluxControlImage.execute({"samples": torch.zeros(1, 4, 8, 8)}, control_vae, image)
    with pytest.raises(ValueError, match=r"image: 2 control images for a latent batch of 3"):
        DSFluxControlImage.execute({"samples": torch.zeros(3, 16, 8, 8)}, control_vae, image.repeat(2, 1, 1, 1))


def test_inpaint_with_a_control_image_keeps_the_outside(control_models):
    """Diffusers Inpaint's latent for a Canny/Depth dev model, then the control image: the sampler
    holds the outside to the picture (the composite is exact there) and repaints the inside."""
    from diffusers_studio.nodes.flux_control import DSFluxControlImage
    from diffusers_studio.nodes.inpaint import DSInpaint, DSInpaintComposite

    model, text_encoder, vae = load("tiny-flux-control")
    photo = pil_inputs.as_image(pil_inputs.picture(5))
    mask = pil_inputs.as_mask(pil_inputs.mask_picture())
    latent, used_mask = DSInpaint.execute(photo, mask, vae, model, grow=0, blur=0.0).args
    latent = DSFluxControlImage.execute(latent, vae, pil_inputs.as_image(_control_picture())).args[0]
    decoded = _decode(vae, _sample(model, text_encoder, latent, seed=4))
    composite = DSInpaintComposite.execute(photo, decoded, used_mask).args[0]
    outside = (used_mask == 0)[..., None].expand_as(photo)
    assert torch.equal(composite[outside], photo[outside])
    inside = (used_mask > 0.999)[..., None].expand_as(photo)
    assert float((composite[inside] - photo[inside]).abs().max()) > 1e-2


@pytest.fixture(scope="module")
def control_files(models_dir, control_models):
    """The same weights as BFL's flux1-canny-dev.safetensors layout (img_in 128 wide) with split text
    encoders and ae.safetensors, and as a ComfyUI all-in-one checkpoint."""
    import folder_paths

    components = tiny_dit.tiny_flux_components(0, control=True)
    root = models_dir / "control_files"
    dirs = {name: root / name for name in ("diffusion_models", "text_encoders", "vae")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    dit_export.save_transformer(components["transformer"], dirs["diffusion_models"] / "flux1-canny-tiny.safetensors",
                                layout="original")
    dit_export.save_clip(components["text_encoder"], dirs["text_encoders"] / "control-clip_l-tiny.safetensors")
    dit_export.save_t5(components["text_encoder_2"], dirs["text_encoders"] / "control-t5xxl-tiny.safetensors")
    dit_export.save_ae(components["vae"], dirs["vae"] / "control-ae-tiny.safetensors")
    dit_export.save_all_in_one(components, models_dir / "checkpoints" / "flux1-canny-tiny-aio.safetensors")
    for name, path in dirs.items():
        folder_paths.add_model_folder_path(name, str(path), is_default=True)
    folder_paths.filename_list_cache.clear()
    return root


@pytest.mark.parametrize("route", ["split-original", "all-in-one"])
def test_single_files_load_as_canny_depth_dev_and_match_the_folder(control_files, route):
    from diffusers_studio.nodes.engine import families
    from diffusers_studio.nodes.flux_control import DSFluxControlImage
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.split_loader import DSLoadSplitModel

    if route == "all-in-one":
        files = DSLoadModel.execute("flux1-canny-tiny-aio.safetensors", "float32").args
    else:
        inputs = dict(transformer_name="flux1-canny-tiny.safetensors", text_encoder_1="control-t5xxl-tiny.safetensors",
                      text_encoder_2="control-clip_l-tiny.safetensors", text_encoder_3="none",
                      vae_name="control-ae-tiny.safetensors", dtype="float32")
        assert DSLoadSplitModel.validate_inputs(**inputs) is True
        files = DSLoadSplitModel.execute(**inputs).args
    model = files[0]
    assert (model.family, model.variant) == ("flux", "control")
    assert families.of(model).default_guidance == 10.0 and families.of(model).input_channels(model) == 32

    def picture(bundles):
        m, t, v = bundles
        latent = DSFluxControlImage.execute({"samples": torch.zeros(1, 16, 8, 8)}, v,
                                            pil_inputs.as_image(_control_picture())).args[0]
        return _decode(v, _sample(m, t, latent, seed=5, steps=3))

    _close(picture(files), picture(load("tiny-flux-control")).numpy())
