"""DSLoadLoRA on SD3 and Flux.1 as ComfyUI calls it, against diffusers' pipelines.

Graph: DSLoadModel (a tiny diffusers folder) -> DSLoadLoRA x2 (peft-format
files with transformer and CLIP-L layers) -> DSTextEncode -> DSSampler ->
DSVAEDecode. Reference: FluxPipeline / StableDiffusion3Pipeline on deep
copies of the same loaded modules with load_lora_weights + set_adapters at
the same per-component weights. Float32, max abs difference <= 1e-4; then
the same graph without the LoRAs gives the plain images again bit for bit.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import dit_loras
import ldm_export
import tiny_dit

TOL = 1e-4
SIZE = 64
STACK = (("dit-a.safetensors", 0.8, 0.5), ("dit-b.safetensors", -0.6, 1.2))
KOHYA = "flux-kohya.safetensors"


@pytest.fixture(scope="module")
def dit_setup(models_dir):
    import folder_paths

    folder = models_dir / "diffusers"
    made = {"tiny-sd3-lora": tiny_dit.sd3_pipeline(0), "tiny-flux-lora": tiny_dit.flux_pipeline(0, dev=True)}
    loras = models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    for name, pipe in made.items():
        ldm_export.save_diffusers_folder(pipe, folder / name)
        for index, (file, _, _) in enumerate(STACK):
            state = dit_loras.peft_lora(pipe.transformer, pipe.text_encoder, seed=10 + index)
            save_file(state, str(loras / f"{name}-{file}"))
    flux = made["tiny-flux-lora"].transformer
    kohya = dit_loras.kohya_flux_from_peft(dit_loras.peft_lora(flux, seed=20, shared_qkv=True), alpha=2.0)
    save_file(kohya, str(loras / KOHYA))
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    folder_paths.filename_list_cache.clear()
    return loras


def _nodes():
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.lora import DSLoadLoRA
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    return DSLoadModel, DSLoadLoRA, DSTextEncode, DSSampler, DSVAEDecode


def _generate(model, text_encoder, vae, cfg):
    _, _, encode, sampler, decode = _nodes()
    positive = encode.execute(text_encoder, "a photo of a cat", 1, 0, False, 0).args[0]
    negative = encode.execute(text_encoder, "blurry", 1, 0, False, 0).args[0]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    out = sampler.execute(model, positive, negative, latent, 42, 3, cfg, "Euler", "normal", 1.0).args[0]
    return decode.execute(vae, out).args[0].numpy()


def _reference(name, bundles, folder, cfg, stack=None):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    model, text_encoder, vae = bundles
    parts = {"transformer": copy.deepcopy(model.unet), "vae": vae.vae,
             "scheduler": FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config)}
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")]
    for (enc, tok), encoder, tokenizer in zip(names, text_encoder.text_encoders, text_encoder.tokenizers):
        parts[enc], parts[tok] = copy.deepcopy(encoder), tokenizer
    flux = model.family == "flux"
    if flux:
        parts.update(image_encoder=None, feature_extractor=None)
    pipe = (FluxPipeline if flux else StableDiffusion3Pipeline)(**parts)
    pipe.set_progress_bar_config(disable=True)
    adapters = []
    stack = stack or [(f"{name}-{file}", m, t) for file, m, t in STACK]
    for index, (file, _, _) in enumerate(stack):
        pipe.load_lora_weights(str(folder), weight_name=file, adapter_name=f"a{index}")
        adapters.append(f"a{index}")
    pipe.set_adapters(adapters, adapter_weights=[{"transformer": m, "text_encoder": t} for _, m, t in stack])
    kwargs = {"guidance_scale": 3.5} if flux else {"guidance_scale": cfg, "negative_prompt": "blurry"}
    return pipe("a photo of a cat", num_inference_steps=3, height=SIZE, width=SIZE,
                generator=torch.Generator().manual_seed(42), output_type="np", **kwargs).images


@pytest.mark.parametrize("name,cfg", [("tiny-flux-lora", 1.0), ("tiny-sd3-lora", 4.0)])
def test_stacked_loras_match_diffusers_and_restore_exactly(dit_setup, name, cfg):
    load, lora_node, *_ = _nodes()
    bundles = load.execute(name, "float32").args
    plain = _generate(*bundles, cfg)
    model, text_encoder = bundles[0], bundles[1]
    for file, strength_model, strength_te in STACK:
        model, text_encoder = lora_node.execute(model, text_encoder, f"{name}-{file}", strength_model,
                                                strength_te).args
    encode = _nodes()[2]
    assert len(model.patches) == len(text_encoder.patches) == len(STACK)
    plain_cond = encode.execute(bundles[1], "a photo of a cat", 1, 0, False, 0).args[0]
    lora_cond = encode.execute(text_encoder, "a photo of a cat", 1, 0, False, 0).args[0]
    assert (lora_cond.pooled - plain_cond.pooled).abs().max() > 1e-3  # CLIP-L's LoRA layers took effect
    weights = {k: v.clone() for k, v in bundles[0].unet.state_dict().items()}
    with_loras = _generate(model, text_encoder, bundles[2], cfg)
    expected = _reference(name, bundles, dit_setup, cfg)
    assert np.abs(with_loras - plain).max() > 1e-3
    diff = float(np.abs(with_loras - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"
    assert all(torch.equal(v, bundles[0].unet.state_dict()[k]) for k, v in weights.items())
    assert np.array_equal(_generate(*bundles, cfg), plain)  # the next prompt without the LoRAs


def test_flux_lora_on_sd3_refused_before_sampling(dit_setup):
    load, lora_node, *_ = _nodes()
    model, text_encoder, _ = load.execute("tiny-sd3-lora", "float32").args
    with pytest.raises(ValueError) as info:
        lora_node.execute(model, text_encoder, "tiny-flux-lora-dit-a.safetensors", 1.0, 1.0)
    message = str(info.value)
    assert "tiny-flux-lora-dit-a.safetensors" in message and "Stable Diffusion 3" in message and "Flux" in message


def test_kohya_flux_file_matches_diffusers(dit_setup):
    """A kohya / sd-scripts Flux file (fused qkv, alpha) against FluxPipeline.load_lora_weights of the same file."""
    load, lora_node, *_ = _nodes()
    bundles = load.execute("tiny-flux-lora", "float32").args
    model, text_encoder = lora_node.execute(bundles[0], bundles[1], KOHYA, 0.7, 1.0).args
    images = _generate(model, text_encoder, bundles[2], 1.0)
    expected = _reference("tiny-flux-lora", bundles, dit_setup, 1.0, stack=[(KOHYA, 0.7, 1.0)])
    diff = float(np.abs(images - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"
    assert np.abs(images - _generate(*bundles, 1.0)).max() > 1e-3
