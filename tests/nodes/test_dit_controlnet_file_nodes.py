"""Flux / SD3.5 ControlNets as lone files in models/controlnet, through the node graph, against diffusers.

The files are what people download: an InstantX-style Flux Union ControlNet's
weights alone (diffusers names, no config.json) and Stability's
sd3.5_large_controlnet_canny / depth.safetensors layout (control_type 1, canny,
feeds the VAE pixels * 127.5 + 0.5, as Stability's reference and the model
card's image processor do). DSLoadModel (diffusers folder) -> DSTextEncode ->
DSLoadControlNet (the file) -> DSApplyControlNet (with the VAE) -> DSSampler ->
DSVAEDecode; the reference is FluxControlNetPipeline /
StableDiffusion3ControlNetPipeline on the very same loaded modules, PIL
control image, same seed. Float32, decoded images within 1e-4. XLabs' original
file (flux-canny-controlnet-v3: BFL block names, a pixel-hint Sequential) runs
as the "-diffusers" release of the same weights does in FluxControlNetPipeline;
a BFL-named ControlNet without XLabs' hint embedder is refused by the node with
the file named.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dit_export
import dit_tiny
import ldm_export
import tiny_dit

TOL = 1e-4
SIZE = 64


def _sd35_controlnet(seed: int):
    from diffusers import SD3ControlNetModel

    model = SD3ControlNetModel(
        patch_size=2, in_channels=dit_tiny.LATENT, out_channels=dit_tiny.LATENT, num_layers=1, attention_head_dim=64,
        num_attention_heads=2, pooled_projection_dim=96, joint_attention_dim=None, pos_embed_max_size=None,
        pos_embed_type=None, use_pos_embed=False, force_zeros_for_pooled_projection=False,
    )
    return tiny_dit._randomize(model, seed)


@pytest.fixture(scope="module")
def cn_files(models_dir):
    import folder_paths
    from diffusers import StableDiffusion3Pipeline

    folder = models_dir / "diffusers"
    ldm_export.save_diffusers_folder(tiny_dit.flux_pipeline(0, dev=True), folder / "tiny-flux-dev-cnfile")
    sd35 = dit_tiny.tiny_sd3_components("sd35_large")
    tiny_dit.narrow_posterior(sd35["vae"])
    ldm_export.save_diffusers_folder(StableDiffusion3Pipeline(**sd35), folder / "tiny-sd35-large-cnfile")
    cn = models_dir / "controlnet_dit_files"
    dit_export.save_controlnet_file(tiny_dit.tiny_flux_controlnet(2, num_mode=4),
                                    cn / "FLUX.1-dev-Controlnet-Union-tiny.safetensors")
    dit_export.save_sd35_controlnet_original(_sd35_controlnet(4), cn / "sd3.5_large_controlnet_canny-tiny.safetensors")
    dit_export.save_sd35_controlnet_original(_sd35_controlnet(4), cn / "sd3.5_large_controlnet_depth-tiny.safetensors",
                                             control_type=2)
    dit_export.save_xlabs_controlnet_original(tiny_dit.tiny_flux_controlnet(6, xlabs=True),
                                              cn / "flux-canny-controlnet-v3-tiny.safetensors")
    ldm_export._save({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2),
                      "controlnet_blocks.0.weight": torch.zeros(2, 2)},
                     cn / "flux-controlnet-odd-tiny.safetensors")
    folder_paths.add_model_folder_path("controlnet", str(cn), is_default=True)
    folder_paths.filename_list_cache.clear()
    return cn


def _hint():
    torch.manual_seed(3)
    return (torch.rand(1, SIZE, SIZE, 3) * 255).round() / 255


def _pil(image):
    from PIL import Image

    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


def _graph(model_name, cn_name, negative, *, seed, cfg, mode, channels):
    from diffusers_studio.nodes.controlnet import DSApplyControlNet, DSLoadControlNet
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    model, text_encoder, vae = DSLoadModel.execute(model_name, "float32").args
    pos = DSTextEncode.execute(text_encoder, "a cat", 1, 0, False, 0).args[0]
    neg = DSTextEncode.execute(text_encoder, negative, 1, 0, False, 0).args[0]
    assert DSLoadControlNet.validate_inputs(cn_name, "float32") is True
    control_net = DSLoadControlNet.execute(cn_name, "float32").args[0]
    pos, neg = DSApplyControlNet.execute(pos, neg, control_net, _hint(), 0.8, 0.0, 0.75, False, None, vae, mode).args
    latent = {"samples": torch.zeros(1, channels, SIZE // 8, SIZE // 8)}
    out = DSSampler.execute(model, pos, neg, latent, seed, 3, cfg, "Euler", "normal", 1.0).args[0]
    images = DSVAEDecode.execute(vae, out).args[0].numpy()
    return images, (model, text_encoder, vae), control_net


def _reference(pipe_cls, bundles, control_net, canny=False, **kwargs):
    pipe = tiny_dit.pipeline_of(pipe_cls, bundles, controlnet=control_net.module)
    if canny:
        pipe.image_processor = tiny_dit.sd35_canny_image_processor(pipe.vae_scale_factor)
    return pipe(prompt="a cat", control_image=_pil(_hint()), controlnet_conditioning_scale=0.8,
                control_guidance_end=0.75, num_inference_steps=3, height=SIZE, width=SIZE, output_type="np",
                **kwargs).images


def _close(images, expected):
    assert images.shape == expected.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(images - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"


def test_flux_union_file_graph_matches_flux_controlnet_pipeline(cn_files):
    from diffusers import FluxControlNetPipeline

    images, bundles, control_net = _graph("tiny-flux-dev-cnfile", "FLUX.1-dev-Controlnet-Union-tiny.safetensors",
                                          "", seed=9, cfg=1.0, mode=1, channels=16)
    assert control_net.family == "flux" and control_net.module.config.num_mode == 4
    expected = _reference(FluxControlNetPipeline, bundles, control_net, control_mode=1, guidance_scale=3.5,
                          generator=torch.Generator().manual_seed(9))
    _close(images, expected)


@pytest.mark.parametrize("kind", ["canny", "depth"])
def test_stability_sd35_file_graph_matches_sd3_controlnet_pipeline(cn_files, kind):
    """control_type 1 (canny) takes the model card's canny processor, 2 (depth) the pipeline's own."""
    from diffusers import StableDiffusion3ControlNetPipeline

    images, bundles, control_net = _graph("tiny-sd35-large-cnfile", f"sd3.5_large_controlnet_{kind}-tiny.safetensors",
                                          "blurry", seed=4, cfg=4.0, mode=-1, channels=dit_tiny.LATENT)
    assert control_net.family == "sd3" and control_net.module.config.use_pos_embed is False
    assert control_net.hint_affine == ((127.5, 0.5) if kind == "canny" else (2.0, -1.0))
    expected = _reference(StableDiffusion3ControlNetPipeline, bundles, control_net, canny=kind == "canny",
                          negative_prompt="blurry", guidance_scale=4.0, generator=torch.Generator().manual_seed(4))
    _close(images, expected)
    if kind == "canny":  # without the canny input scaling the picture is another one
        plain = _reference(StableDiffusion3ControlNetPipeline, bundles, control_net, negative_prompt="blurry",
                           guidance_scale=4.0, generator=torch.Generator().manual_seed(4))
        assert float(np.abs(images - plain).max()) > 1e-3


def test_xlabs_original_file_graph_matches_flux_controlnet_pipeline(cn_files):
    from diffusers import FluxControlNetPipeline

    images, bundles, control_net = _graph("tiny-flux-dev-cnfile", "flux-canny-controlnet-v3-tiny.safetensors",
                                          "", seed=5, cfg=1.0, mode=-1, channels=16)
    assert control_net.family == "flux" and control_net.module.input_hint_block is not None
    expected = _reference(FluxControlNetPipeline, bundles, control_net, guidance_scale=3.5,
                          generator=torch.Generator().manual_seed(5))
    _close(images, expected)


def test_bfl_named_file_without_xlabs_hint_embedder_is_refused_by_the_node(cn_files):
    from diffusers_studio.nodes.controlnet import DSLoadControlNet

    with pytest.raises(ValueError, match=r"'flux-controlnet-odd-tiny.safetensors' has Flux blocks in BFL's names.*"
                                         r"XLabs' own files"):
        DSLoadControlNet.execute("flux-controlnet-odd-tiny.safetensors", "float32")
