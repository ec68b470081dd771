"""LoRA: the same images as diffusers' load_lora_weights + set_adapters, and no trace after.

The LoRA files are written here, in the formats users meet: diffusers/peft
(`unet.<module>.lora_A.weight`, alphas in the safetensors metadata as
diffusers' save_lora_weights stores them) and kohya/A1111 (`lora_unet_*`,
`lora_te_*`, one alpha per layer, LoCon convolutions; SDXL with the original
UNet's block names, taken from ComfyUI's own name mapping). Each file is
loaded both by diffusers (peft layers, `set_adapters`) and by the pack (merged
weights for one run), and the sampled latents are compared (float32, 1e-4).
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import save_file

from diffusers_studio.nodes.engine import lora as lora_mod
from diffusers_studio.nodes.engine import lora_formats as fmt
from diffusers_studio.nodes.engine.components import ModelBundle, TextEncoderBundle
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.schedulers import make_scheduler
from diffusers_studio.nodes.engine.text_encoding import encode_prompt

TOL = 1e-4
STEPS = 4
CFG = 6.0
SEED = 77
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


# ------------------------------------------------------------ LoRA writers

UNET_LAYERS = ("attn1.to_q", "attn1.to_out.0", "attn2.to_k", "attn2.to_v", "ff.net.2", "proj_in", "resnets.0.conv1")
TE_ATTENTION = ("self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")


def _lora_pair(weight: torch.Tensor, rank: int, gen: torch.Generator, magnitude: float = 0.2):
    """Random (down, up): LoCon-style for convolutions (kxk down, 1x1 up)."""
    if weight.ndim == 4:
        down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=gen) * magnitude
        up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen) * magnitude
    else:
        down = torch.randn(rank, weight.shape[1], generator=gen) * magnitude
        up = torch.randn(weight.shape[0], rank, generator=gen) * magnitude
    return down, up


def _targets(module, endings):
    return [(n, m) for n, m in module.named_modules() if n.endswith(endings) and hasattr(m, "weight")]


def kohya_sd1_lora(pipe, seed: int, rank: int = 4, alpha: float = 2.0, te=TE_ATTENTION) -> dict:
    """kohya/A1111 keys for an SD1 model: diffusers module paths with '_' (kohya's SD1 naming)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in _targets(pipe.unet, UNET_LAYERS):
        down, up = _lora_pair(module.weight, rank, gen)
        key = "lora_unet_" + name.replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
        sd[key + ".alpha"] = torch.tensor(alpha)
    for name, module in _targets(pipe.text_encoder, te):
        down, up = _lora_pair(module.weight, rank, gen)
        key = "lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
        sd[key + ".alpha"] = torch.tensor(alpha)
    return sd


def diffusers_sd1_lora(pipe, seed: int, rank: int = 4, alpha: float = 6.0):
    """peft keys (`unet.<module>.lora_A.weight`) and diffusers' metadata holding lora_alpha."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in _targets(pipe.unet, UNET_LAYERS[:5]):
        sd[f"unet.{name}.lora_A.weight"], sd[f"unet.{name}.lora_B.weight"] = _lora_pair(module.weight, rank, gen)
    for name, module in _targets(pipe.text_encoder, TE_ATTENTION):
        down, up = _lora_pair(module.weight, rank, gen)
        name = "text_model." + name.removeprefix("text_model.")
        sd[f"text_encoder.{name}.lora_A.weight"], sd[f"text_encoder.{name}.lora_B.weight"] = down, up
    meta = {}
    for component in ("unet", "text_encoder"):
        modules = sorted({k[len(component) + 1:].split(".lora_")[0] for k in sd if k.startswith(component + ".")})
        if component == "text_encoder":
            modules = [m.removeprefix("text_model.") for m in modules]
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules).to_dict()
        meta.update({f"{component}.{k}": list(v) if isinstance(v, set) else v for k, v in config.items()})
    return sd, {"format": "pt", "lora_adapter_metadata": json.dumps(meta, default=str)}


def kohya_sdxl_lora(pipe, seed: int, rank: int = 4, alpha: float = 3.0) -> dict:
    """An SDXL kohya LoRA: UNet layers in the original (sgm) UNet's names, te1 and te2."""
    import ldm_export

    utils, _ = ldm_export._comfy()
    mapping = utils.unet_to_diffusers(ldm_export._ldm_unet_layout(pipe.unet.config))
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    endings = UNET_LAYERS + ("time_emb_proj", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv")
    for name, module in _targets(pipe.unet, endings):
        down, up = _lora_pair(module.weight, rank, gen, 0.15)
        key = "lora_unet_" + mapping[name + ".weight"][: -len(".weight")].replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
        sd[key + ".alpha"] = torch.tensor(alpha)
    for prefix, encoder in (("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)):
        for name, module in _targets(encoder, TE_ATTENTION):
            down, up = _lora_pair(module.weight, rank, gen)
            key = prefix + "text_model_" + name.removeprefix("text_model.").replace(".", "_")
            sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
            sd[key + ".alpha"] = torch.tensor(alpha)
    return sd


def _write(tmp_path, name, sd, metadata=None):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


# ------------------------------------------------------------------ fixtures


def _bundles(pipe, family: str):
    model = ModelBundle(family, "tiny", pipe.unet, dict(pipe.scheduler.config), torch.float32,
                        latent_scaling_factor=pipe.vae.config.scaling_factor)
    if family == "sd1":
        te = TextEncoderBundle(family, "tiny", (pipe.tokenizer,), (pipe.text_encoder,))
    else:
        te = TextEncoderBundle(family, "tiny", (pipe.tokenizer, pipe.tokenizer_2),
                               (pipe.text_encoder, pipe.text_encoder_2))
    return model, te


@pytest.fixture(scope="module")
def sd1():
    """Ours (never touched by diffusers' LoRA loading) and a reference pipeline with the same weights."""
    from tiny_models import sd1_pipeline

    ours, ref = sd1_pipeline(0), sd1_pipeline(0)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler(dict(ref.scheduler.config), "Euler", "normal")
    model, te = _bundles(ours, "sd1")
    return {"ours": ours, "ref": ref, "model": model, "te": te}


@pytest.fixture()
def ref(sd1):
    pipe = sd1["ref"]
    yield pipe
    pipe.unload_lora_weights()


def _ours(model, te, seed=SEED, steps=STEPS):
    pos, neg = encode_prompt(te, PROMPT), encode_prompt(te, NEGATIVE)
    out = sample(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=seed, steps=steps, cfg=CFG,
                 sampler_name="Euler")
    return out["samples"] * model.latent_scaling_factor


def _reference(pipe, size=64, **extra):
    return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                generator=torch.Generator().manual_seed(SEED), height=size, width=size,
                output_type="latent", **extra).images


def _diff(a, b) -> float:
    return (a - b).abs().max().item()


def _snapshot(*modules):
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]


def _same_as(snapshot, *modules) -> bool:
    for saved, module in zip(snapshot, modules):
        state = module.state_dict()
        if list(state) != list(saved) or not all(torch.equal(state[k], saved[k]) for k in saved):
            return False
    return True


# ------------------------------------------------------------------ parity


def test_diffusers_format_matches_diffusers(sd1, ref, tmp_path):
    sd, meta = diffusers_sd1_lora(sd1["ours"], seed=1)
    path = _write(tmp_path, "peft.safetensors", sd, meta)
    plain = _ours(sd1["model"], sd1["te"])

    ref.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="a")
    ref.set_adapters(["a"], adapter_weights=[{"unet": 0.8, "text_encoder": 0.6}])
    expected = _reference(ref)

    loaded = lora_mod.load_lora(str(path))
    assert loaded.parsed.format == fmt.DIFFUSERS and not loaded.parsed.ignored
    model, te = lora_mod.apply_lora(sd1["model"], sd1["te"], loaded, 0.8, 0.6)
    ours = _ours(model, te)
    assert _diff(ours, plain) > 1e-2, "the LoRA must change the result for this test to mean anything"
    assert _diff(ours, expected) <= TOL, (_diff(ours, expected), _diff(ours, plain))


def test_kohya_format_matches_diffusers(sd1, ref, tmp_path):
    path = _write(tmp_path, "kohya.safetensors", kohya_sd1_lora(sd1["ours"], seed=2))
    ref.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="k")
    ref.set_adapters(["k"], adapter_weights=[{"unet": 0.7, "text_encoder": 1.3}])
    expected = _reference(ref)

    loaded = lora_mod.load_lora(str(path))
    assert loaded.parsed.format == fmt.KOHYA
    model, te = lora_mod.apply_lora(sd1["model"], sd1["te"], loaded, 0.7, 1.3)
    conv = [n for n in model.patches[0].targets if n.endswith("conv1")]
    assert conv, "the LoCon convolution layers must be matched"
    assert _diff(_ours(model, te), expected) <= TOL


@pytest.fixture()
def sd1_float64():
    """The sd1 pair in float64, for a comparison that rounding cannot decide."""
    from tiny_models import sd1_pipeline

    ours, ref = sd1_pipeline(0).to(dtype=torch.float64), sd1_pipeline(0).to(dtype=torch.float64)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler(dict(ref.scheduler.config), "Euler", "normal")
    model, te = _bundles(ours, "sd1")
    return {"ours": ours, "ref": ref, "model": replace(model, dtype=torch.float64), "te": te}


def test_two_stacked_loras_match_diffusers_with_two_adapters(sd1_float64, tmp_path):
    """Two adapters merged into the weights equal peft's two adapters, computed apart.

    The pack merges W + 0.5 dW1 - 0.4 dW2 once; peft computes W x + B1 A1 x +
    B2 A2 x at every call. In float32 those sums round differently: on latents
    of magnitude ~40 (this tiny model's) the two end 6e-5 to 1.0e-4 apart
    depending on the CPU's kernels, i.e. 15-26 float32 steps, so a 1e-4 bound
    in float32 measures the CPU, not the LoRA. Run in float64 they agree to
    within a few float32 steps of the signal: the pack returns float32 latents,
    so that is exactly the rounding of its output, and any real mismatch (a
    wrong scale, a layer missed) would be orders of magnitude larger.
    """
    sd1, ref = sd1_float64, sd1_float64["ref"]
    first = _write(tmp_path, "one.safetensors", kohya_sd1_lora(sd1["ours"], seed=3))
    sd, meta = diffusers_sd1_lora(sd1["ours"], seed=4)
    second = _write(tmp_path, "two.safetensors", sd, meta)
    ref.load_lora_weights(str(tmp_path), weight_name=first.name, adapter_name="one")
    ref.load_lora_weights(str(tmp_path), weight_name=second.name, adapter_name="two")
    ref.set_adapters(["one", "two"], adapter_weights=[{"unet": 0.5, "text_encoder": 0.9},
                                                      {"unet": -0.4, "text_encoder": 0.3}])
    expected = _reference(ref)
    assert expected.dtype == torch.float64

    model, te = lora_mod.apply_lora(sd1["model"], sd1["te"], lora_mod.load_lora(str(first)), 0.5, 0.9)
    model, te = lora_mod.apply_lora(model, te, lora_mod.load_lora(str(second)), -0.4, 0.3)
    assert len(model.patches) == 2 and len(te.patches) == 2
    float32_steps = 4 * torch.finfo(torch.float32).eps * expected.abs().max().item()
    assert _diff(_ours(model, te).double(), expected) <= float32_steps


@pytest.mark.xfail(strict=True, reason=(
    "diffusers 0.42 bug: its kohya converter writes CLIP attention keys in the old style (to_q_lora.down) "
    "and MLP keys in the new one (lora_linear_layer.down); convert_state_dict_to_peft guesses one style for "
    "all keys from the presence of 'to_out_lora', so a kohya text-encoder LoRA on q/k and the MLP but not on "
    "out_proj loses its attention layers (its q/k keys are never converted)"))
def test_kohya_text_encoder_attention_and_mlp_match_diffusers(sd1, ref, tmp_path):
    sd = kohya_sd1_lora(sd1["ours"], seed=5, te=("self_attn.q_proj", "self_attn.k_proj", "mlp.fc1"))
    path = _write(tmp_path, "mixed.safetensors", sd)
    ref.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="m")
    expected = _reference(ref)
    model, te = lora_mod.apply_lora(sd1["model"], sd1["te"], lora_mod.load_lora(str(path)))
    assert len(te.patches[0].targets[0]) == 5 * 3  # 5 layers x (q, k, fc1): all of them applied
    assert _diff(_ours(model, te), expected) <= TOL


def test_sdxl_kohya_lora_with_original_unet_names_matches_diffusers(tmp_path):
    from tiny_models import sdxl_pipeline

    ours, ref = sdxl_pipeline(0), sdxl_pipeline(0)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler(dict(ref.scheduler.config), "Euler", "normal")
    path = _write(tmp_path, "xl.safetensors", kohya_sdxl_lora(ours, seed=6))
    ref.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="xl")
    ref.set_adapters(["xl"], adapter_weights=[0.9])
    expected = _reference(ref)

    model, te = _bundles(ours, "sdxl")
    loaded = lora_mod.load_lora(str(path))
    patched_model, patched_te = lora_mod.apply_lora(model, te, loaded, 0.9, 0.9)
    unet_layers = patched_model.patches[0].targets
    assert len(unet_layers) == len(loaded.parsed.layers["unet"])  # every sgm name found its layer
    assert any("downsamplers" in n for n in unet_layers) and any("upsamplers" in n for n in unet_layers)
    assert all(patched_te.patches[0].targets)  # both text encoders
    assert _diff(_ours(patched_model, patched_te), expected) <= TOL


# ---------------------------------------------------------- adapters are values


def test_runs_without_the_lora_or_with_another_strength_are_exact(sd1):
    base_model, base_te = sd1["model"], sd1["te"]
    modules = (base_model.unet, base_te.text_encoders[0])
    before = _snapshot(*modules)
    names_before = [n for n, _ in base_model.unet.named_modules()]
    loaded = lora_mod.lora_from_state_dict(kohya_sd1_lora(sd1["ours"], seed=7), "k.safetensors")
    half = lora_mod.apply_lora(base_model, base_te, loaded, 0.5, 0.5)
    full = lora_mod.apply_lora(base_model, base_te, loaded, 1.0, 1.0)

    plain = _ours(base_model, base_te, steps=2)
    at_half = _ours(*half, steps=2)
    at_full = _ours(*full, steps=2)
    assert _diff(at_half, at_full) > 1e-3 and _diff(plain, at_half) > 1e-3
    assert torch.equal(_ours(*half, steps=2), at_half)
    assert torch.equal(_ours(base_model, base_te, steps=2), plain)
    assert _same_as(before, *modules)
    assert [n for n, _ in base_model.unet.named_modules()] == names_before
    assert base_model.patches == () and base_te.patches == ()  # the inputs were not changed


def test_weights_are_restored_when_the_run_is_cancelled(sd1):
    loaded = lora_mod.lora_from_state_dict(kohya_sd1_lora(sd1["ours"], seed=8), "k.safetensors")
    model, te = lora_mod.apply_lora(sd1["model"], sd1["te"], loaded)
    before = _snapshot(model.unet)
    cond = encode_prompt(te, PROMPT)
    calls = []

    def stop():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("cancel")

    with pytest.raises(KeyboardInterrupt):
        sample(model, cond, cond, {"samples": torch.zeros(1, 4, 8, 8)}, seed=1, steps=3, cfg=2.0,
               sampler_name="Euler", should_stop=stop)
    assert _same_as(before, model.unet)


def test_strength_zero_adds_no_patch(sd1):
    loaded = lora_mod.lora_from_state_dict(kohya_sd1_lora(sd1["ours"], seed=9), "k.safetensors")
    model, te = lora_mod.apply_lora(sd1["model"], sd1["te"], loaded, 0.0, 0.0)
    assert model is sd1["model"] and te is sd1["te"]


def test_float16_weights_merge_in_float32_and_restore(sd1):
    from tiny_models import sd1_pipeline

    pipe = sd1_pipeline(0).to(torch.float16)
    model, te = _bundles(pipe, "sd1")
    model = replace(model, dtype=torch.float16)
    loaded = lora_mod.lora_from_state_dict(kohya_sd1_lora(pipe, seed=10), "k.safetensors")
    patched, _ = lora_mod.apply_lora(model, te, loaded)
    hook = patched.patches[0]
    name = next(iter(hook.targets))
    weight = dict(pipe.unet.named_modules())[name].weight
    original = weight.data

    class Run:
        pass

    run = Run()
    run.model = patched
    hook.begin(run, "model")
    expected = (original.float() + hook.targets[name].delta(weight.shape, "cpu")).half()
    assert weight.dtype == torch.float16 and torch.equal(weight.data, expected)
    hook.end()
    assert weight.data_ptr() == original.data_ptr() and torch.equal(weight.data, original)


# ------------------------------------------------------------------ formats


def test_weights_only_torch_file_is_read(sd1, tmp_path):
    path = tmp_path / "old.pt"
    torch.save(kohya_sd1_lora(sd1["ours"], seed=11), path)
    loaded = lora_mod.load_lora(str(path))
    assert loaded.parsed.format == fmt.KOHYA and loaded.parsed.count() > 10


def test_attention_processor_and_old_diffusers_keys_are_read():
    down, up = torch.ones(2, 4), torch.ones(6, 2)
    parsed = fmt.parse_state_dict({
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": down,
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": up,
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight": down,
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": up,
        "unet.mid_block.attentions.0.proj_in.lora.down.weight": down,
        "unet.mid_block.attentions.0.proj_in.lora.up.weight": up,
        "unet.conv_in.lora_A.default.weight": down,
        "unet.conv_in.lora_B.default.weight": up,
    })
    assert set(parsed.layers["unet"]) == {
        "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0",
        "mid_block_attentions_0_proj_in",
        "conv_in",
    }
    assert set(parsed.layers["text_encoder"]) == {"text_model_encoder_layers_0_mlp_fc1"}
    assert not parsed.ignored


def test_locon_tucker_middle_gives_the_full_kernel():
    gen = torch.Generator().manual_seed(0)
    down, mid, up = torch.randn(2, 5, 1, 1, generator=gen), torch.randn(2, 2, 3, 3, generator=gen), \
        torch.randn(7, 2, 1, 1, generator=gen)
    layer = fmt.LoraLayer(down=down, up=up, alpha=1.0, mid=mid)
    delta = layer.delta(torch.Size([7, 5, 3, 3]), "cpu")
    expected = torch.einsum("oa,abhw,bi->oihw", up.flatten(1), mid, down.flatten(1)) * 0.5
    assert torch.allclose(delta, expected) and layer.kernel() == (3, 3)


# ---------------------------------------------------------------- bad input


def test_sdxl_lora_on_an_sd1_model_names_both():
    from tiny_models import sd1_pipeline, sdxl_pipeline

    xl = sdxl_pipeline(0)
    sd1_model, sd1_te = _bundles(sd1_pipeline(0), "sd1")
    sd = kohya_sdxl_lora(xl, seed=12)
    # What a real SDXL LoRA says about itself: 2048-wide cross-attention keys.
    loaded = lora_mod.lora_from_state_dict(sd, "xl-style.safetensors")
    with pytest.raises(ValueError) as info:
        lora_mod.apply_lora(sd1_model, sd1_te, loaded)
    message = str(info.value)
    assert "lora_name" in message and "xl-style.safetensors" in message and "'tiny'" in message
    assert "SDXL" in message and "SD1.x" in message


def _refiner_bundles():

    from tiny_models import sdxl_refiner_pipeline

    pipe = sdxl_refiner_pipeline(0)
    model = ModelBundle("sdxl", "tiny-refiner", pipe.unet, dict(pipe.scheduler.config), torch.float32,
                        latent_scaling_factor=pipe.vae.config.scaling_factor, variant="refiner")
    te = TextEncoderBundle("sdxl", "tiny-refiner", (pipe.tokenizer_2,), (pipe.text_encoder_2,), variant="refiner")
    return pipe, model, te


def test_sdxl_base_lora_on_the_refiner_says_so():
    from tiny_models import sdxl_pipeline

    _, model, te = _refiner_bundles()
    loaded = lora_mod.lora_from_state_dict(kohya_sdxl_lora(sdxl_pipeline(0), seed=14), "xl-style.safetensors")
    with pytest.raises(ValueError) as info:
        lora_mod.apply_lora(model, te, loaded)
    message = str(info.value)
    assert "lora_name" in message and "xl-style.safetensors" in message and "'tiny-refiner'" in message
    assert "SDXL refiner" in message and "do not apply to the SDXL refiner" in message and "base model" in message


def test_a_refiner_lora_reaches_bigG_as_the_refiners_only_encoder():
    """A LoRA trained on the refiner names bigG as text encoder 2 (lora_te2_), as on SDXL."""
    import ldm_export

    pipe, model, te = _refiner_bundles()
    utils, _ = ldm_export._comfy()
    mapping = utils.unet_to_diffusers(ldm_export._ldm_unet_layout(pipe.unet.config))
    gen = torch.Generator().manual_seed(15)
    sd = {}
    for name, module in _targets(pipe.unet, UNET_LAYERS):
        down, up = _lora_pair(module.weight, 4, gen, 0.15)
        key = "lora_unet_" + mapping[name + ".weight"][: -len(".weight")].replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
    for name, module in _targets(pipe.text_encoder_2, TE_ATTENTION):
        down, up = _lora_pair(module.weight, 4, gen)
        key = "lora_te2_text_model_" + name.removeprefix("text_model.").replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
    loaded = lora_mod.lora_from_state_dict(sd, "refiner-lora.safetensors")
    patched_model, patched_te = lora_mod.apply_lora(model, te, loaded)
    assert len(patched_te.patches[0].targets) == 1 and patched_te.patches[0].targets[0]
    assert len(patched_model.patches[0].targets) == len(loaded.parsed.layers["unet"])
    assert not torch.equal(encode_prompt(patched_te, "a cat").embeds, encode_prompt(te, "a cat").embeds)

    with_te1 = dict(sd)
    with_te1["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 32)
    with_te1["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(32, 4)
    with pytest.raises(ValueError, match="first text encoder"):
        lora_mod.apply_lora(model, te, lora_mod.lora_from_state_dict(with_te1, "two-te.safetensors"))


def test_a_lora_with_no_matching_key_is_an_error(sd1):
    junk = {"foo.bar": torch.ones(2), "lora_unet_nowhere_to_q.lora_down.weight": torch.ones(2, 4),
            "lora_unet_nowhere_to_q.lora_up.weight": torch.ones(4, 2)}
    with pytest.raises(ValueError, match="none of the 1 layers / 2 keys"):
        lora_mod.apply_lora(sd1["model"], sd1["te"], lora_mod.lora_from_state_dict(junk, "junk.safetensors"))


def test_ignored_keys_are_counted_in_the_log(sd1, caplog):
    sd = kohya_sd1_lora(sd1["ours"], seed=13)
    sd["lora_unet_down_blocks_1_attentions_0_proj_in.hada_w1_a"] = torch.ones(2, 2)  # LoHa: not supported
    sd["lora_unet_nowhere.lora_down.weight"], sd["lora_unet_nowhere.lora_up.weight"] = torch.ones(2, 4), torch.ones(4, 2)
    with caplog.at_level(logging.WARNING, logger=lora_mod.__name__):
        lora_mod.apply_lora(sd1["model"], sd1["te"], lora_mod.lora_from_state_dict(sd, "partly.safetensors"))
    assert "2 key(s) ignored" in caplog.text and "partly.safetensors" in caplog.text


def test_an_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="lora_name: 'broken.safetensors'"):
        lora_mod.load_lora(str(path))
