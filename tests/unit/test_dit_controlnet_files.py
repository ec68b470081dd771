"""Flux / SD3 ControlNets from lone files (no config.json) against the same weights from a folder.

Each tiny ControlNet is saved twice: as a diffusers folder (config.json +
weights, the folder route) and as one .safetensors in the layout people
download (InstantX Flux and Union, XLabs "-diffusers", InstantX SD3: the
diffusers names; Stability's sd3.5_large_controlnet_*: MMDiT block names and a
control_type scalar, written by dit_export). The file route must infer the
config from the shapes and sample to the same latents (float32, <= 1e-4);
the SD3.5 file also against StableDiffusion3ControlNetPipeline, which lends
the transformer's position embedding as the pack does. Layouts diffusers has
no model for are refused naming the file, what it is and the fix.

The SD3 models are dit_tiny's (64-wide heads, as Stability sizes MMDiTs and as
a file without qk-norm weights must be read); the Flux ones tiny_dit's.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import dit_export
import dit_tiny
import ldm_export
import tiny_dit
import tiny_models
from diffusers_studio.nodes.engine import controlnet_loading
from diffusers_studio.nodes.engine.controlnet import apply_controlnet
from diffusers_studio.nodes.engine.families import ModelLoadError
from diffusers_studio.nodes.engine.loading import load_checkpoint
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.text_encoding import encode_prompt

TOL = 1e-4
SIZE = 64


def tiny_sd3_controlnet(seed: int, *, sd35: bool):
    """An SD3ControlNetModel fitting dit_tiny's SD3: InstantX style (joint blocks, own position embedding,
    zero pooling) or SD3.5 style (single-stream blocks, the transformer's position embedding, pooled text)."""
    from diffusers import SD3ControlNetModel

    common = dict(patch_size=2, in_channels=dit_tiny.LATENT, out_channels=dit_tiny.LATENT, num_layers=1,
                  attention_head_dim=64, num_attention_heads=2, pooled_projection_dim=96)
    if sd35:
        model = SD3ControlNetModel(**common, joint_attention_dim=None, pos_embed_max_size=None, pos_embed_type=None,
                                   use_pos_embed=False, force_zeros_for_pooled_projection=False)
    else:
        model = SD3ControlNetModel(**common, joint_attention_dim=96, caption_projection_dim=128,
                                   pos_embed_max_size=16)
    return tiny_dit._randomize(model, seed)


@pytest.fixture(scope="module")
def cn_models(tmp_path_factory):
    from diffusers import StableDiffusion3Pipeline

    root = tmp_path_factory.mktemp("ditcnfiles")
    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(root / "flux-dev"), safe_serialization=True)
    for name, variant in (("sd3-medium", "sd3_medium"), ("sd35-large", "sd35_large")):
        parts = dit_tiny.tiny_sd3_components(variant)
        tiny_dit.narrow_posterior(parts["vae"])
        StableDiffusion3Pipeline(**parts).save_pretrained(str(root / name), safe_serialization=True)
    controlnets = {
        "flux-instantx": tiny_dit.tiny_flux_controlnet(1),
        "flux-union": tiny_dit.tiny_flux_controlnet(2, num_mode=4),
        "flux-xlabs-diffusers": tiny_dit.tiny_flux_controlnet(6, xlabs=True),
        "sd3-instantx": tiny_sd3_controlnet(3, sd35=False),
        "sd35": tiny_sd3_controlnet(4, sd35=True),
    }
    for name, module in controlnets.items():
        module.save_pretrained(str(root / f"folder-{name}"))
        dit_export.save_controlnet_file(module, root / f"{name}.safetensors")
    dit_export.save_sd35_controlnet_original(controlnets["sd35"], root / "sd3.5_large_controlnet_canny.safetensors")
    dit_export.save_xlabs_controlnet_original(controlnets["flux-xlabs-diffusers"],
                                              root / "flux-canny-controlnet-v3.safetensors")
    return root


def _cn(root, name):
    return controlnet_loading.load_controlnet(root / name, dtype="float32", use_cache=False)


def _run(root, model_name, cn, *, mode=-1, cfg=1.0, negative=None):
    model, text, vae = load_checkpoint(root / model_name, dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())
    torch.manual_seed(3)
    hint = (torch.rand(1, SIZE, SIZE, 3) * 255).round() / 255
    pos = encode_prompt(text, "a cat")
    neg = encode_prompt(text, negative) if negative is not None else None
    pos, neg = apply_controlnet(pos, neg, cn, hint, strength=0.8, start_percent=0.0, end_percent=0.75, vae=vae,
                                control_mode=mode)
    channels = 16 if model.family == "flux" else dit_tiny.LATENT
    latent = {"samples": torch.zeros(1, channels, SIZE // 8, SIZE // 8)}
    out = sample(model, pos, neg, latent, seed=7, steps=3, cfg=cfg, sampler_name="Euler")["samples"]
    return out, (model, text, vae), hint


CASES = [  # (file, folder, model, control_mode, cfg, negative)
    ("flux-instantx.safetensors", "folder-flux-instantx", "flux-dev", -1, 1.0, None),
    ("flux-union.safetensors", "folder-flux-union", "flux-dev", 2, 1.0, None),
    ("flux-xlabs-diffusers.safetensors", "folder-flux-xlabs-diffusers", "flux-dev", -1, 1.0, None),
    ("flux-canny-controlnet-v3.safetensors", "folder-flux-xlabs-diffusers", "flux-dev", -1, 1.0, None),
    ("sd3-instantx.safetensors", "folder-sd3-instantx", "sd3-medium", -1, 4.0, "blurry"),
    ("sd35.safetensors", "folder-sd35", "sd35-large", -1, 4.0, "blurry"),
    ("sd3.5_large_controlnet_canny.safetensors", "folder-sd35", "sd35-large", -1, 4.0, "blurry"),
]


@pytest.mark.parametrize("file,folder,model,mode,cfg,negative", CASES, ids=[c[0] for c in CASES])
def test_file_matches_the_same_weights_from_a_folder(cn_models, file, folder, model, mode, cfg, negative):
    from_file, from_folder = _cn(cn_models, file), _cn(cn_models, folder)
    assert from_file.family == from_folder.family == ("flux" if model.startswith("flux") else "sd3")
    assert type(from_file.module) is type(from_folder.module)
    keep = ("in_channels", "num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads",
            "joint_attention_dim", "pooled_projection_dim", "guidance_embeds", "axes_dims_rope", "num_mode",
            "conditioning_embedding_channels", "patch_size", "qk_norm", "use_pos_embed",
            "force_zeros_for_pooled_projection", "pos_embed_max_size", "pos_embed_type")
    got, want = dict(from_file.module.config), dict(from_folder.module.config)
    for key in keep:
        if key in want:
            assert got[key] == want[key], (key, got[key], want[key])
    # The same weights: a canny file's hint scaling (control_type, which folders lack) is compared apart.
    from_folder = dataclasses.replace(from_folder, hint_affine=from_file.hint_affine)
    a, *_ = _run(cn_models, model, from_file, mode=mode, cfg=cfg, negative=negative)
    b, *_ = _run(cn_models, model, from_folder, mode=mode, cfg=cfg, negative=negative)
    assert float((a - b).abs().max()) <= TOL


def test_stability_sd35_file_matches_the_pipeline(cn_models):
    """The SD3.5 path (no own position embedding: the transformer's, lent per run) against
    StableDiffusion3ControlNetPipeline on the same modules."""
    from diffusers import StableDiffusion3ControlNetPipeline

    cn = _cn(cn_models, "sd3.5_large_controlnet_canny.safetensors")
    assert cn.module.config.use_pos_embed is False and cn.module.config.joint_attention_dim is None
    out, (model, text, vae), hint = _run(cn_models, "sd35-large", cn, cfg=4.0, negative="blurry")
    assert cn.module.pos_embed is None  # the lent position embedding was given back
    pipe = tiny_dit.pipeline_of(StableDiffusion3ControlNetPipeline, (model, text, vae), controlnet=cn.module)
    pipe.image_processor = tiny_dit.sd35_canny_image_processor(pipe.vae_scale_factor)  # control_type 1: canny
    latents = pipe(prompt="a cat", negative_prompt="blurry",
                   control_image=_pil(hint),
                   controlnet_conditioning_scale=0.8, control_guidance_end=0.75, num_inference_steps=3,
                   guidance_scale=4.0, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(7),
                   output_type="latent").images
    expected = latents / model.latent_scaling_factor + model.latent_shift_factor
    assert float((out - expected).abs().max()) <= TOL


def _pil(image):
    from PIL import Image

    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


def _save(tmp_path, name, tensors):
    return ldm_export._save(tensors, tmp_path / name)


def test_xlabs_original_file_holds_the_diffusers_release_weights(cn_models):
    """XLabs' own file: every tensor lands in the FluxControlNetModel the "-diffusers" release builds,
    bit for bit (the qkv split included), and the hint embedder keeps its convs in order."""
    from_file = _cn(cn_models, "flux-canny-controlnet-v3.safetensors")
    from_folder = _cn(cn_models, "folder-flux-xlabs-diffusers")
    got, want = from_file.module.state_dict(), from_folder.module.state_dict()
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    assert from_file.module.config.num_single_layers == 0
    assert from_file.module.config.conditioning_embedding_channels == 16


def test_xlabs_original_file_on_a_deeper_transformer_matches_the_pipeline(tmp_path):
    """XLabs' two ControlNet blocks feed a deeper transformer in turn (block i takes residual i % 2, as XLabs'
    own sampler and FluxControlNetPipeline's controlnet_blocks_repeat do), not in halves as InstantX's."""
    from diffusers import FluxControlNetModel, FluxControlNetPipeline, FluxPipeline, FluxTransformer2DModel

    parts = tiny_dit.tiny_flux_components(0, dev=True)
    torch.manual_seed(11)
    parts["transformer"] = FluxTransformer2DModel.from_config({**parts["transformer"].config, "num_layers": 3})
    FluxPipeline(**parts, image_encoder=None, feature_extractor=None).save_pretrained(str(tmp_path / "flux-deep"))
    two = {**tiny_dit.tiny_flux_controlnet(7, xlabs=True).config, "num_layers": 2}
    dit_export.save_xlabs_controlnet_original(tiny_dit._randomize(FluxControlNetModel.from_config(two), 7),
                                              tmp_path / "flux-hed-controlnet-v3.safetensors")
    cn = _cn(tmp_path, "flux-hed-controlnet-v3.safetensors")
    assert cn.module.config.num_layers == 2
    out, (model, text, vae), hint = _run(tmp_path, "flux-deep", cn)
    pipe = tiny_dit.pipeline_of(FluxControlNetPipeline, (model, text, vae), controlnet=cn.module)
    latents = pipe(prompt="a cat", control_image=_pil(hint), controlnet_conditioning_scale=0.8,
                   control_guidance_end=0.75, num_inference_steps=3, guidance_scale=3.5, height=SIZE, width=SIZE,
                   generator=torch.Generator().manual_seed(7), output_type="latent").images
    expected = pipe._unpack_latents(latents, SIZE, SIZE, 8) / model.latent_scaling_factor + model.latent_shift_factor
    assert float((out - expected).abs().max()) <= TOL


def test_bfl_named_controlnet_without_the_xlabs_hint_embedder_is_refused(tmp_path):
    path = _save(tmp_path, "flux-controlnet-odd.safetensors", {
        "double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2), "controlnet_blocks.0.weight": torch.zeros(2, 2),
    })
    with pytest.raises(ModelLoadError, match=r"'flux-controlnet-odd.safetensors' has Flux blocks in BFL's names "
                                             r"\(double_blocks.\*\) but no XLabs pixel-hint embedder"):
        controlnet_loading.load_controlnet(path, dtype="float32", use_cache=False)


@pytest.mark.parametrize("drop,message", [
    ("img_in.weight", r"has no 'img_in.weight': the file is incomplete or damaged"),
    ("input_hint_block.", r"hint embedder \(input_hint_block\) has 1 convolution\(s\), not XLabs' eight"),
])
def test_damaged_xlabs_file_is_refused_naming_what_is_missing(cn_models, tmp_path, drop, message):
    from safetensors.torch import load_file

    state = load_file(cn_models / "flux-canny-controlnet-v3.safetensors")
    kept = {k: v for k, v in state.items() if not k.startswith(drop)}
    if drop.endswith("."):  # the Sequential cut to its first conv, the one the layout is told by
        kept["input_hint_block.0.weight"] = state["input_hint_block.0.weight"]
    path = _save(tmp_path, "flux-depth-controlnet-v3.safetensors", kept)
    with pytest.raises(ModelLoadError, match=r"'flux-depth-controlnet-v3.safetensors' .*" + message):
        controlnet_loading.load_controlnet(path, dtype="float32", use_cache=False)


def test_mistoline_is_refused(tmp_path):
    path = _save(tmp_path, "mistoline_flux.dev_v1.safetensors", {
        "controlnet_blocks.0.linear.weight": torch.zeros(2, 2), "single_controlnet_blocks.0.linear.weight":
        torch.zeros(2, 2),
    })
    with pytest.raises(ModelLoadError, match=r"'mistoline_flux.dev_v1.safetensors' is a MistoLine.*diffusers-format"):
        controlnet_loading.load_controlnet(path, dtype="float32", use_cache=False)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_inpainting_controlnets_are_refused(tmp_path, family):
    """An extra mask channel in the hint embedder: Apply ControlNet gives the hint only."""
    if family == "flux":
        state = dict(tiny_dit.tiny_flux_controlnet(1).state_dict())
        state["controlnet_x_embedder.weight"] = torch.zeros(32, 68)
    else:
        state = dict(tiny_sd3_controlnet(3, sd35=False).state_dict())
        state["pos_embed_input.proj.weight"] = torch.zeros(128, dit_tiny.LATENT + 1, 2, 2)
    path = _save(tmp_path, f"{family}-inpainting-cn.safetensors", state)
    with pytest.raises(ModelLoadError, match=rf"'{family}-inpainting-cn.safetensors' takes \d+ extra hint "
                                             r"channels.*inpainting ControlNet.*Diffusers Inpaint"):
        controlnet_loading.load_controlnet(path, dtype="float32", use_cache=False)


def test_truncated_flux_file_names_the_missing_tensor(tmp_path):
    state = {k: v for k, v in tiny_dit.tiny_flux_controlnet(1).state_dict().items() if k != "context_embedder.weight"}
    path = _save(tmp_path, "broken-union.safetensors", state)
    with pytest.raises(ModelLoadError, match=r"'broken-union.safetensors' looks like a Flux.1 ControlNet but has "
                                             r"no 'context_embedder.weight'"):
        controlnet_loading.load_controlnet(path, dtype="float32", use_cache=False)


def test_sd1_controlnet_files_keep_their_path(tmp_path):
    """The DiT check lets SD1 files (LDM and diffusers layouts) through to their own loader unchanged."""
    from harness import models_controlnet

    cn = models_controlnet.tiny_sd1_controlnet(0)
    for path in (models_controlnet.save_ldm_single_file(cn, tmp_path / "control_tiny_ldm.safetensors"),
                 models_controlnet.save_diffusers_single_file(cn, tmp_path / "control_tiny_diffusers.safetensors")):
        bundle = controlnet_loading.load_controlnet(path, dtype="float32", use_cache=False)
        assert bundle.family == "sd1" and type(bundle.module).__name__ == "ControlNetModel"


def test_a_controlnet_file_in_a_model_slot_is_named_a_controlnet(cn_models, tmp_path):
    """A ControlNet shares the transformer's block names: selected as a transformer or a checkpoint it is
    called what it is, with where it belongs, not a damaged transformer."""
    from diffusers_studio.nodes.engine import single_file_dit

    for file in ("flux-union.safetensors", "sd3-instantx.safetensors", "sd3.5_large_controlnet_canny.safetensors"):
        with pytest.raises(ModelLoadError, match=rf"Transformer file '{file}' is a Flux / SD3 ControlNet, not a "
                                                 r"transformer: put it in models/controlnet"):
            single_file_dit.detect(cn_models / file)
        with pytest.raises(ModelLoadError, match=rf"'{file}' looks like a Flux / SD3 ControlNet, not a checkpoint "
                                                 r"\(put it in models/controlnet"):
            load_checkpoint(cn_models / file, dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())
