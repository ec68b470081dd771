"""DSLoadLoRA as ComfyUI calls it: names from models/loras, chaining, parity, exactness.

The LoRA files are the harness's tiny kohya LoRA (what the shipped workflow
uses) and a second one written here; the model is the tiny SD1 single file
loaded through DSLoadModel. The reference is diffusers' StableDiffusionPipeline
on deep copies of the very same modules, with load_lora_weights + set_adapters.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from harness import models_lora

TOL = 1e-4
MODEL = "tiny-sd15.safetensors"
SECOND = "second-lora.safetensors"


@pytest.fixture(scope="module")
def loras(models_dir):
    """models/loras with the harness LoRA, a second one, and a file that is no LoRA."""
    import folder_paths
    import tiny_models

    models_lora.write(models_dir, seed=0)
    folder = models_dir / "loras"
    parts = tiny_models.tiny_sd1_components(0)
    second = models_lora.kohya_lora(parts["unet"], parts["text_encoder"], seed=5, alpha=4.0)
    save_file({k: v.contiguous() for k, v in second.items()}, str(folder / SECOND))
    save_file({"some.weight": torch.ones(3)}, str(folder / "not-a-lora.safetensors"))
    folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    folder_paths.filename_list_cache.clear()
    return folder


def _nodes():
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.lora import DSLoadLoRA
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    return DSLoadModel, DSLoadLoRA, DSTextEncode, DSSampler, DSVAEDecode


def _generate(model, text_encoder, vae, seed=42):
    _, _, encode, sampler, decode = _nodes()
    positive = encode.execute(text_encoder, "a photo of a cat", 1).args[0]
    negative = encode.execute(text_encoder, "blurry", 1).args[0]
    latent = sampler.execute(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, seed, 4, 7.0,
                             "Euler", "normal", 1.0).args[0]
    return decode.execute(vae, latent).args[0].numpy()


def _reference(bundles, files_and_weights, folder):
    from diffusers import StableDiffusionPipeline

    from diffusers_studio.nodes.engine.schedulers import make_scheduler

    model, text_encoder, vae = bundles
    pipe = StableDiffusionPipeline(
        unet=copy.deepcopy(model.unet), vae=copy.deepcopy(vae.vae),
        text_encoder=copy.deepcopy(text_encoder.text_encoders[0]), tokenizer=text_encoder.tokenizers[0],
        scheduler=make_scheduler(model.scheduler_config, "Euler", "normal"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    names = []
    for index, (name, weights) in enumerate(files_and_weights):
        pipe.load_lora_weights(str(folder), weight_name=name, adapter_name=f"a{index}")
        names.append(f"a{index}")
    pipe.set_adapters(names, adapter_weights=[w for _, w in files_and_weights])
    return pipe("a photo of a cat", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.0,
                height=64, width=64, generator=torch.Generator().manual_seed(42), output_type="np").images


def test_schema_and_listing(loras):
    _, lora_node, *_ = _nodes()
    schema = lora_node.define_schema()
    assert schema.node_id == "DSLoadLoRA" and schema.category == "Diffusers Studio/loaders"
    assert [i.id for i in schema.inputs] == ["model", "text_encoder", "lora_name", "strength_model",
                                             "strength_text_encoder"]
    assert all(socket.tooltip for socket in list(schema.inputs) + list(schema.outputs))
    assert models_lora.SD15_LORA in schema.inputs[2].options and SECOND in schema.inputs[2].options


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "missing.safetensors", "x/../../y.safetensors"])
def test_unknown_or_escaping_names_are_refused(loras, name):
    _, lora_node, *_ = _nodes()
    message = lora_node.validate_inputs(name, 1.0, 1.0)
    assert isinstance(message, str) and name in message and "models/loras" in message
    with pytest.raises(ValueError, match="lora_name"):
        lora_node.execute(None, None, name, 1.0, 1.0)


def test_chained_loras_match_diffusers_and_leave_the_model_exact(loras):
    load, lora_node, *_ = _nodes()
    bundles = load.execute(MODEL, "float32").args
    plain = _generate(*bundles)
    model, text_encoder = lora_node.execute(bundles[0], bundles[1], models_lora.SD15_LORA, 0.8, 0.5).args
    model, text_encoder = lora_node.execute(model, text_encoder, SECOND, -0.6, 1.2).args
    with_loras = _generate(model, text_encoder, bundles[2])

    expected = _reference(bundles, [(models_lora.SD15_LORA, {"unet": 0.8, "text_encoder": 0.5}),
                                     (SECOND, {"unet": -0.6, "text_encoder": 1.2})], loras)
    assert np.abs(with_loras - plain).max() > 1e-3
    assert np.abs(with_loras - expected).max() <= TOL
    assert np.array_equal(_generate(*bundles), plain)  # the next prompt without the LoRAs


def test_a_lora_for_another_family_names_both(loras):
    load, lora_node, *_ = _nodes()
    model, text_encoder, _ = load.execute("tiny-sdxl.safetensors", "float32").args
    with pytest.raises(ValueError) as info:
        lora_node.execute(model, text_encoder, models_lora.SD15_LORA, 1.0, 1.0)
    message = str(info.value)
    assert models_lora.SD15_LORA in message and "tiny-sdxl.safetensors" in message and "SDXL" in message


def test_a_file_with_no_lora_layer_is_an_error(loras):
    load, lora_node, *_ = _nodes()
    model, text_encoder, _ = load.execute(MODEL, "float32").args
    with pytest.raises(ValueError, match="none of the 0 layers"):
        lora_node.execute(model, text_encoder, "not-a-lora.safetensors", 1.0, 1.0)
