"""FLUX.1 Fill from single files: detected by input width, inpainting as from the folder and FluxFillPipeline.

The tiny Fill transformer (tests/tiny_dit.py: 2 x 64 + 256 input columns for
64-wide packed latents, the ratio of the real 384-wide `img_in`) is written
the ways Fill is distributed: BFL's flux1-fill-dev.safetensors layout
(`img_in.weight` with the wide input), the same under ComfyUI's
`model.diffusion_model.` prefix, the diffusers transformer's own names, each
with split text encoders and ae.safetensors (DSLoadSplitModel), and a ComfyUI
all-in-one checkpoint (DSLoadModel). Each route must load as the Fill
variant and give, through Diffusers Inpaint -> Diffusers Sampler -> VAE
Decode, the pictures the diffusers folder of the same weights gives and
FluxFillPipeline(image=PIL, mask_image=PIL) gives on the loaded components.
Float32, <= 1e-4.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dit_export
import ldm_export
import pil_inputs
import tiny_dit

TOL = 1e-4
SIZE = 64
ROUTES = ["split-original", "split-comfyui", "split-diffusers", "all-in-one"]


@pytest.fixture(scope="module")
def fill_files(models_dir):
    import folder_paths

    components = tiny_dit.tiny_flux_components(0, fill=True)
    root = models_dir / "fill_files"
    dirs = {name: root / name for name in ("diffusion_models", "text_encoders", "vae")}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    folder = models_dir / "diffusers" / "tiny-flux-fill"
    if not folder.exists():  # the same weights test_dit_inpaint writes there
        ldm_export.save_diffusers_folder(tiny_dit.flux_fill_pipeline(0), folder)
    for layout in ("original", "comfyui", "diffusers"):
        dit_export.save_transformer(components["transformer"],
                                    dirs["diffusion_models"] / f"flux1-fill-tiny-{layout}.safetensors", layout=layout)
    dit_export.save_clip(components["text_encoder"], dirs["text_encoders"] / "fill-clip_l-tiny.safetensors")
    dit_export.save_t5(components["text_encoder_2"], dirs["text_encoders"] / "fill-t5xxl-tiny.safetensors")
    dit_export.save_ae(components["vae"], dirs["vae"] / "fill-ae-tiny.safetensors")
    dit_export.save_all_in_one(components, models_dir / "checkpoints" / "flux1-fill-tiny-aio.safetensors")
    for name, path in dirs.items():
        folder_paths.add_model_folder_path(name, str(path), is_default=True)
    folder_paths.filename_list_cache.clear()
    return root


def _load(route):
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.split_loader import DSLoadSplitModel

    if route == "folder":
        return DSLoadModel.execute("tiny-flux-fill", "float32").args
    if route == "all-in-one":
        return DSLoadModel.execute("flux1-fill-tiny-aio.safetensors", "float32").args
    inputs = dict(transformer_name=f"flux1-fill-tiny-{route.split('-')[1]}.safetensors",
                  text_encoder_1="fill-t5xxl-tiny.safetensors", text_encoder_2="fill-clip_l-tiny.safetensors",
                  text_encoder_3="none", vae_name="fill-ae-tiny.safetensors", dtype="float32")
    assert DSLoadSplitModel.validate_inputs(**inputs) is True
    return DSLoadSplitModel.execute(**inputs).args


def _inpaint(bundles, *, seed, steps, denoise):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.inpaint import DSInpaint
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    model, text_encoder, vae = bundles
    image, mask = pil_inputs.as_image(pil_inputs.picture(5)), pil_inputs.as_mask(pil_inputs.mask_picture())
    latent, _ = DSInpaint.execute(image, mask, vae, model, grow=0, blur=0.0, blend_unmasked=False).args
    positive = DSTextEncode.execute(text_encoder, "a red door", 1, 0, False, 0).args[0]
    negative = DSTextEncode.execute(text_encoder, "", 1, 0, False, 0).args[0]
    out = DSSampler.execute(model, positive, negative, latent, seed, steps, 1.0, "Euler", "normal", denoise).args[0]
    return DSVAEDecode.execute(vae, out).args[0].numpy()


def _close(got, expected):
    assert got.shape == expected.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(got - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"


@pytest.mark.parametrize("route", ROUTES)
def test_fill_files_load_as_fill_and_match_the_folder_and_pipeline(fill_files, route):
    from diffusers import FluxFillPipeline

    from diffusers_studio.nodes.engine import families

    files, folder = _load(route), _load("folder")
    model, text_encoder, _ = files
    assert (model.family, model.variant, text_encoder.variant) == ("flux", "fill", "fill")
    family = families.of(model)
    assert family.default_guidance == 30.0 and family.input_channels(model) * 4 == tiny_dit.FILL_IN_CHANNELS
    assert model.latent_scaling_factor == folder[0].latent_scaling_factor
    assert model.latent_shift_factor == folder[0].latent_shift_factor
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert strip(model.scheduler_config) == strip(folder[0].scheduler_config)

    images = _inpaint(files, seed=4, steps=3, denoise=1.0)
    _close(images, _inpaint(folder, seed=4, steps=3, denoise=1.0))
    expected = tiny_dit.pipeline_of(FluxFillPipeline, files)(
        prompt="a red door", image=pil_inputs.picture(5), mask_image=pil_inputs.mask_picture(), height=SIZE,
        width=SIZE, num_inference_steps=3, generator=torch.Generator().manual_seed(4), output_type="np",
    ).images
    _close(images, expected)


def test_fill_detection_reads_the_input_width_in_every_layout(fill_files):
    from diffusers_studio.nodes.engine import single_file_dit

    for layout in ("original", "comfyui", "diffusers"):
        info = single_file_dit.detect(fill_files / "diffusion_models" / f"flux1-fill-tiny-{layout}.safetensors")
        assert (info.family, info.variant, info.label) == ("flux", "fill", "FLUX.1 Fill dev")


def test_a_fill_width_without_guidance_is_refused(tmp_path):
    """Fill is a dev model: a Fill-wide input without the guidance embedder is no FLUX.1 variant."""
    from diffusers_studio.nodes.engine import single_file_dit
    from diffusers_studio.nodes.engine.families import ModelLoadError

    state = tiny_dit.tiny_flux_components(0, fill=True)["transformer"].state_dict()
    state = {k: v for k, v in state.items() if ".guidance_embedder." not in k}
    path = ldm_export._save(state, tmp_path / "odd-fill.safetensors")
    with pytest.raises(ModelLoadError, match=r"'odd-fill.safetensors'.*without a guidance embedder"):
        single_file_dit.detect(path)

