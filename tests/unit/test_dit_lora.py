"""LoRA on SD3 / Flux in the engine: file formats, family refusals, exact restore.

The tiny transformers come from tests/tiny_dit.py, the LoRA files from
tests/dit_loras.py; parity with diffusers' pipelines is tests/nodes/test_dit_lora_graph.py.
"""
from __future__ import annotations

import pytest
import torch

import dit_loras
import tiny_dit
import tiny_models
from diffusers_studio.nodes.engine import lora as lora_mod
from diffusers_studio.nodes.engine.lora_dit import dit_lora_family
from diffusers_studio.nodes.engine.loading import load_checkpoint


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-lora")
    tiny_dit.sd3_pipeline(0).save_pretrained(str(root / "sd3"), safe_serialization=True)
    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(root / "flux"), safe_serialization=True)
    return root


def _load(folders, name):
    return load_checkpoint(folders / name, dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())


def _merged(model, text_encoder, lora):
    """The transformer's and CLIP-L's weights with `lora` merged (strength 1), as state dicts."""
    new_model, new_te = lora_mod.apply_lora(model, text_encoder, lora, 1.0, 1.0)
    (patch,) = new_model.patches
    saved = lora_mod._merge(model.unet, [(patch.targets, 1.0)])
    transformer = {k: v.clone() for k, v in model.unet.state_dict().items()}
    lora_mod._restore(saved)
    if not new_te.patches:
        return transformer, None
    (te_patch,) = new_te.patches
    saved = lora_mod._merge(text_encoder.text_encoders[0], [(te_patch.targets[0], 1.0)])
    clip = {k: v.clone() for k, v in text_encoder.text_encoders[0].state_dict().items()}
    lora_mod._restore(saved)
    return transformer, clip


def _assert_same_weights(first, second):
    assert first.keys() == second.keys()
    for key in first:
        assert torch.allclose(first[key], second[key], atol=1e-6), key


def test_kohya_flux_file_converted_equals_the_peft_one(folders):
    model, text_encoder, _ = _load(folders, "flux")
    peft = dit_loras.peft_lora(model.unet, text_encoder.text_encoders[0], seed=1, shared_qkv=True)
    kohya = dit_loras.kohya_flux_from_peft(peft, alpha=2.0)
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv") for k in kohya)
    plain = {k: v.clone() for k, v in model.unet.state_dict().items()}
    from_peft = _merged(model, text_encoder, lora_mod.lora_from_state_dict(peft, "peft.safetensors"))
    from_kohya = _merged(model, text_encoder, lora_mod.lora_from_state_dict(kohya, "kohya.safetensors"))
    for ours, theirs in zip(from_peft, from_kohya):
        _assert_same_weights(ours, theirs)
    changed = [k for k in plain if not torch.equal(plain[k], from_peft[0][k])]
    assert "single_transformer_blocks.0.proj_out.weight" in changed and "transformer_blocks.0.attn.to_q.weight" in changed
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in plain.items())  # restored bit for bit


def test_comfyui_saved_flux_format_is_read(folders):
    """ComfyUI's LoRA files name the layers diffusion_model.<BFL name>; diffusers' converter reads them."""
    model, text_encoder, _ = _load(folders, "flux")
    peft = dit_loras.peft_lora(model.unet, None, seed=2, shared_qkv=True)
    kohya = dit_loras.kohya_flux_from_peft(peft, alpha=4.0)
    comfy = {k.replace("lora_unet_", "diffusion_model.").replace("_img_attn_", ".img_attn.")
             .replace("_txt_attn_", ".txt_attn.").replace("_img_mlp_", ".img_mlp.").replace("_txt_mlp_", ".txt_mlp.")
             .replace("_linear2", ".linear2").replace("double_blocks_", "double_blocks.")
             .replace("single_blocks_", "single_blocks."): v for k, v in kohya.items()}
    assert dit_lora_family(comfy) == "Flux.1"
    new_model, _ = lora_mod.apply_lora(model, text_encoder, lora_mod.lora_from_state_dict(comfy, "comfy.safetensors"))
    assert len(new_model.patches[0].targets) == len([k for k in peft if k.endswith("lora_A.weight")])


def test_xlabs_flux_file_converted_equals_the_peft_one(folders):
    model, text_encoder, _ = _load(folders, "flux")
    peft = dit_loras.peft_lora(model.unet, None, seed=5, shared_qkv=True)
    xlabs, covered = dit_loras.xlabs_flux_from_peft(peft)
    assert any(".processor.qkv_lora1." in k for k in xlabs)
    from_peft = _merged(model, text_encoder, lora_mod.lora_from_state_dict(covered, "peft.safetensors"))[0]
    from_xlabs = _merged(model, text_encoder, lora_mod.lora_from_state_dict(xlabs, "xlabs.safetensors"))[0]
    _assert_same_weights(from_peft, from_xlabs)


def test_sd3_lora_with_t5_layers_reaches_t5(folders):
    """T5 layers (text_encoder_3.*) merge into SD3's T5 with the text-encoder strength."""
    from diffusers_studio.nodes.engine.text_encoding import encode_prompt

    model, text_encoder, _ = _load(folders, "sd3")
    t5 = text_encoder.text_encoders[2]
    state = dit_loras.peft_lora(model.unet, None, seed=6)
    gen = torch.Generator().manual_seed(7)
    for name, module in t5.named_modules():
        if name.endswith(("SelfAttention.q", "SelfAttention.v")):
            state[f"text_encoder_3.{name}.lora_A.weight"] = torch.randn(4, module.weight.shape[1], generator=gen)
            state[f"text_encoder_3.{name}.lora_B.weight"] = torch.randn(module.weight.shape[0], 4, generator=gen)
    lora = lora_mod.lora_from_state_dict(state, "sd3-t5.safetensors")
    _, patched = lora_mod.apply_lora(model, text_encoder, lora, 1.0, 0.7)
    assert len(patched.patches[0].targets[2]) == 4 and not patched.patches[0].targets[0]
    before = {k: v.clone() for k, v in t5.state_dict().items()}
    plain, with_lora = encode_prompt(text_encoder, "a cat"), encode_prompt(patched, "a cat")
    assert (with_lora.embeds[:, 77:] - plain.embeds[:, 77:]).abs().max() > 1e-4  # T5's part of the sequence
    assert torch.equal(with_lora.embeds[:, :77], plain.embeds[:, :77])  # the CLIPs have no layers
    assert all(torch.equal(v, t5.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    "model_name,lora_kind,expected",
    [("flux", "sd1", "SD1.x / SDXL"), ("sd3", "flux", "Flux.1"), ("flux", "sd3", "SD3")],
)
def test_a_lora_of_another_family_is_refused_naming_both(folders, model_name, lora_kind, expected):
    model, text_encoder, _ = _load(folders, model_name)
    if lora_kind == "sd1":
        parts = tiny_models.tiny_sd1_components(0)
        from harness import models_lora

        state = models_lora.kohya_lora(parts["unet"], parts["text_encoder"], seed=0)
    elif lora_kind == "flux":
        state = dit_loras.peft_lora(tiny_dit.tiny_flux_components(0)["transformer"], seed=3)
    else:
        state = {"transformer.pos_embed.proj.lora_A.weight": torch.zeros(4, 64),
                 "transformer.pos_embed.proj.lora_B.weight": torch.zeros(32, 4)}
    lora = lora_mod.lora_from_state_dict(state, f"{lora_kind}-style.safetensors")
    with pytest.raises(ValueError) as info:
        lora_mod.apply_lora(model, text_encoder, lora)
    message = str(info.value)
    assert f"{lora_kind}-style.safetensors" in message and repr(model.name) in message
    assert expected in message and ("Flux.1 dev" in message if model_name == "flux" else "Stable Diffusion 3" in message)


def test_a_dit_lora_on_sd1_is_refused_naming_both():
    from harness import models_lora  # noqa: F401  (the harness on the path)

    components = tiny_models.tiny_sd1_components(0)
    from diffusers_studio.nodes.engine.components import ModelBundle

    model = ModelBundle(name="tiny-sd15", family="sd1", unet=components["unet"],
                        scheduler_config=dict(components["scheduler"].config), dtype=torch.float32)
    state = dit_loras.peft_lora(tiny_dit.tiny_sd3_components(0)["transformer"], seed=4)
    with pytest.raises(ValueError, match="'dit.safetensors'.*an SD3 / Flux LoRA.*tiny-sd15.*SD1"):
        lora_mod.apply_lora(model, None, lora_mod.lora_from_state_dict(state, "dit.safetensors"))
    flux = dit_loras.peft_lora(tiny_dit.tiny_flux_components(0)["transformer"], seed=4, shared_qkv=True)
    kohya = dit_loras.kohya_flux_from_peft(flux)
    with pytest.raises(ValueError, match="'flux-kohya.safetensors'.*a Flux.1 LoRA.*tiny-sd15.*SD1"):
        lora_mod.apply_lora(model, None, lora_mod.lora_from_state_dict(kohya, "flux-kohya.safetensors"))


def test_kohya_sd3_file_is_refused_by_name(folders):
    model, text_encoder, _ = _load(folders, "sd3")
    state = {"lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight": torch.zeros(4, 32),
             "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight": torch.zeros(96, 4)}
    with pytest.raises(ValueError, match="sd3-kohya.safetensors.*diffusers' SD3 LoRA format"):
        lora_mod.apply_lora(model, text_encoder, lora_mod.lora_from_state_dict(state, "sd3-kohya.safetensors"))


def test_a_flux_control_lora_makes_dev_the_control_variant_and_widens_only_per_run(folders):
    """BFL's Canny/Depth dev LoRAs widen x_embedder to latents + control latents: the merge gives the widened
    weight (original columns, zeros, plus the update) for the run and puts the 64-wide tensor back."""
    model, text_encoder, _ = _load(folders, "flux")
    inner = int(model.unet.x_embedder.weight.shape[0])
    original = model.unet.x_embedder.weight.detach().clone()
    storage = model.unet.x_embedder.weight.data_ptr()
    state = {"transformer.x_embedder.lora_A.weight": torch.ones(1, 128),
             "transformer.x_embedder.lora_B.weight": torch.ones(inner, 1)}
    new_model, _ = lora_mod.apply_lora(model, text_encoder, lora_mod.lora_from_state_dict(state, "canny-lora.safetensors"))
    assert (model.variant, new_model.variant) == ("dev", "control")
    (patch,) = new_model.patches
    saved = lora_mod._merge(model.unet, [(patch.targets, 0.5)])
    widened = model.unet.x_embedder.weight.detach().clone()
    lora_mod._restore(saved)
    assert widened.shape == (inner, 128)
    assert torch.allclose(widened[:, :64], original + 0.5) and torch.allclose(widened[:, 64:], torch.full((inner, 64), 0.5))
    assert model.unet.x_embedder.weight.data_ptr() == storage  # the cached tensor itself is back
    assert torch.equal(model.unet.x_embedder.weight, original)


def test_a_widening_lora_of_another_width_is_refused_by_name(folders):
    model, text_encoder, _ = _load(folders, "flux")
    inner = int(model.unet.x_embedder.weight.shape[0])
    state = {"transformer.x_embedder.lora_A.weight": torch.zeros(4, 96),
             "transformer.x_embedder.lora_B.weight": torch.zeros(inner, 4)}
    with pytest.raises(ValueError, match=r"'odd-lora.safetensors' widens the transformer's input from 64 to 96 "
                                         r"channels.*FLUX.1 Canny dev / Depth dev"):
        lora_mod.apply_lora(model, text_encoder, lora_mod.lora_from_state_dict(state, "odd-lora.safetensors"))


def test_other_model_patches_still_refused_on_dit(folders):
    """Only LoRA patches pass the flow families' sampler check; attention options and the like do not."""
    from diffusers_studio.nodes.engine import families

    model, text_encoder, _ = _load(folders, "flux")
    peft = dit_loras.peft_lora(model.unet, text_encoder.text_encoders[0], seed=8)
    with_lora, _ = lora_mod.apply_lora(model, text_encoder, lora_mod.lora_from_state_dict(peft, "a.safetensors"))
    samples = torch.zeros(1, 16, 8, 8)
    families.of(model).check_latent(with_lora, {"samples": samples}, samples, "model")

    class Options:  # a model patch that is no LoRA
        pass

    with pytest.raises(ValueError, match="Options"):
        families.of(model).check_latent(with_lora.with_patch(Options()), {"samples": samples}, samples, "model")


def test_kohya_flux_t5_layers_dropped_with_a_warning(folders, caplog):
    model, text_encoder, _ = _load(folders, "flux")
    kohya = dit_loras.kohya_flux_from_peft(dit_loras.peft_lora(model.unet, None, seed=9, shared_qkv=True))
    kohya["lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight"] = torch.zeros(4, 48)
    kohya["lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight"] = torch.zeros(32, 4)
    with caplog.at_level("WARNING"):
        new_model, _ = lora_mod.apply_lora(model, text_encoder, lora_mod.lora_from_state_dict(kohya, "t5.safetensors"))
    assert new_model.patches and "'t5.safetensors': its 2 T5 key(s) are not applied" in caplog.text
