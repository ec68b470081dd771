"""A FLUX.1 control LoRA (BFL's Canny / Depth dev LoRAs) on FLUX.1 dev through the node graph, against diffusers.

Graph: Load Diffusers Model (a tiny FLUX.1 dev folder) -> Load Diffusers LoRA
(a control LoRA file: an x_embedder update taking latents + control latents,
whole q/k norm weights, the usual layers) -> Diffusers Flux Control Image ->
Diffusers Sampler -> Diffusers VAE Decode, called as ComfyUI calls them.
Reference: FluxControlPipeline on deep copies of the same loaded modules with
load_lora_weights + set_adapters (diffusers grows x_embedder and overwrites
the norms), a PIL control image, the same seed; float32, max abs difference
at most 1e-4. Afterwards the cached dev transformer is bit for bit what it was
and samples as before.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import dit_graph
import dit_loras
import pil_inputs
import tiny_dit
from dit_graph import encode, load

TOL = 1e-4
SIZE = 64
PROMPT = "a red door"
LORA = "flux1-canny-dev-lora-tiny.safetensors"
DEV = "tiny-flux-dev-controllora"


@pytest.fixture(scope="module")
def control_lora(models_dir):
    import folder_paths

    pipe = tiny_dit.flux_pipeline(0, dev=True)
    dit_graph.save_folders(models_dir, {DEV: lambda: pipe, "tiny-flux-schnell-controllora":
                                        lambda: tiny_dit.flux_pipeline(0, dev=False)})
    loras = models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    state = dit_loras.control_lora(pipe.transformer, seed=4)
    save_file(state, str(loras / LORA))
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    folder_paths.filename_list_cache.clear()
    return state


def _control_picture():
    from PIL import Image

    m = np.zeros((SIZE, SIZE, 3), np.uint8)
    m[::7, :] = 255
    m[:, 3::11] = 255
    return Image.fromarray(m)


def _with_lora(strength: float):
    from diffusers_studio.nodes.lora import DSLoadLoRA

    model, text_encoder, vae = load(DEV)
    lora_model, lora_te = DSLoadLoRA.execute(model, text_encoder, LORA, strength, 1.0).args
    return (model, text_encoder, vae), (lora_model, lora_te)


def _generate(model, text_encoder, vae, latent, seed=7):
    from diffusers_studio.nodes.flux_guidance import DSFluxGuidance
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    positive = DSFluxGuidance.execute(encode(text_encoder, PROMPT), 10.0).args[0]
    out = DSSampler.execute(model, positive, None, latent, seed, 4, 1.0, "Euler", "normal", 1.0).args[0]
    return DSVAEDecode.execute(vae, out).args[0].numpy()


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_control_lora_graph_matches_flux_control_pipeline_and_restores(control_lora, strength):
    from diffusers import FluxControlPipeline

    from diffusers_studio.nodes.flux_control import DSFluxControlImage

    (model, text_encoder, vae), (lora_model, _) = _with_lora(strength)
    assert (model.variant, lora_model.variant) == ("dev", "control")
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    plain = _generate(model, text_encoder, vae, {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)})
    latent = DSFluxControlImage.execute({"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}, vae,
                                        pil_inputs.as_image(_control_picture())).args[0]
    images = _generate(lora_model, text_encoder, vae, latent)

    reference_model = dataclasses.replace(model, unet=copy.deepcopy(model.unet))
    pipe = tiny_dit.pipeline_of(FluxControlPipeline, (reference_model, text_encoder, vae))
    pipe.load_lora_weights(dict(control_lora), adapter_name="control")
    pipe.set_adapters(["control"], adapter_weights=[strength])
    assert pipe.transformer.x_embedder.in_features == 2 * model.unet.x_embedder.in_features
    expected = pipe(prompt=PROMPT, control_image=_control_picture(), height=SIZE, width=SIZE,
                    num_inference_steps=4, guidance_scale=10.0, generator=torch.Generator().manual_seed(7),
                    output_type="np").images
    diff = float(np.abs(images - expected).max())
    assert diff <= TOL, f"max abs difference {diff}"

    after = model.unet.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # widened input and norms put back
    assert float(np.abs(images - plain).max()) > 1e-3
    again = _generate(model, text_encoder, vae, {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)})
    assert np.array_equal(again, plain)


def test_control_lora_without_a_control_image_is_refused_naming_the_node(control_lora):
    (_, _, vae), (lora_model, lora_te) = _with_lora(1.0)
    with pytest.raises(ValueError, match=r"FLUX.1 Canny/Depth dev.*Diffusers Flux Control Image"):
        _generate(lora_model, lora_te, vae, {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)})


def test_control_lora_on_schnell_is_refused_before_sampling(control_lora):
    from diffusers_studio.nodes.lora import DSLoadLoRA

    model, text_encoder, _ = load("tiny-flux-schnell-controllora")
    with pytest.raises(ValueError, match=rf"'{LORA}' widens the transformer's input from 64 to 128 channels.*"
                                         r"FLUX.1 dev"):
        DSLoadLoRA.execute(model, text_encoder, LORA, 1.0, 1.0)
