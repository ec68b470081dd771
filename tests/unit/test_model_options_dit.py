"""Model options on the flow transformers (SD3, Flux) and their T5: the same guarantees as the UNet's.

float8 / int8 / NF4 storage lives on a shared copy (the loaded transformer and
T5 stay bitwise equal, a later run without options is bit-identical), the
attention choice keeps each family's own processors, and regional compilation
finds the families' repeated blocks.
"""
from __future__ import annotations

import re

import pytest
import torch

import tiny_dit
import tiny_models
from diffusers_studio.nodes.engine import model_options as mo
from diffusers_studio.nodes.engine.loading import load_checkpoint
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.text_encoding import encode_prompt

# Measured on the tiny transformers (2 Euler steps, float32 compute), max abs
# difference to the float32 run over max |x|: float8_e4m3fn 0.4 % (Flux) and
# 0.6 % (SD3); int8 0.02 % / 0.03 %; NF4 1.4 % / 2.6 %. The tolerances leave
# room for other seeds, not for a broken layer (those give O(1)).
REL_TOL = {mo.STORAGE_FP8_E4M3: 0.05, mo.STORAGE_FP8_E5M2: 0.10, mo.STORAGE_INT8: 0.01, mo.STORAGE_NF4: 0.10}
# The tiny T5 (d_kv 8, random weights) amplifies NF4's rounding more than the
# transformers do: measured 11.8 % of max |x| on SD3's T5 embeddings (96 wide).
# NF4's exactness against its dequantized weights is tests/unit/test_model_options.py's.
T5_REL_TOL = {**REL_TOL, mo.STORAGE_NF4: 0.25}
ATTN_TOL = 1e-4


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-options")
    out = {}
    for name, pipe in {"flux": tiny_dit.flux_pipeline(0, dev=True), "sd3": tiny_dit.sd3_pipeline(0)}.items():
        pipe.save_pretrained(str(root / name), safe_serialization=True)
        out[name] = load_checkpoint(root / name, dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())
    yield out
    mo.clear_stored_copies()


def _run(model, text, prompt="a cat"):
    pos, neg = encode_prompt(text, prompt), encode_prompt(text, "")
    return sample(model, pos, neg, {"samples": torch.zeros(1, 16, 8, 8)}, seed=3, steps=2, cfg=2.0,
                  sampler_name="Euler")["samples"]


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _rel(a, b) -> float:
    return (a - b).abs().max().item() / b.abs().max().item()


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("storage", [mo.STORAGE_FP8_E4M3, mo.STORAGE_FP8_E5M2, mo.STORAGE_INT8, mo.STORAGE_NF4])
def test_transformer_storage_is_close_and_leaves_the_loaded_transformer_bit_identical(bundles, family, storage):
    model, text, _ = bundles[family]
    before_state = _state(model.unet)
    before = _run(model, text)

    opt = mo.apply_options(model, weight_storage=storage)
    assert opt.unet is not model.unet and opt.family == family
    assert mo.parameter_bytes(opt.unet) < mo.parameter_bytes(model.unet)
    out = _run(opt, text)
    assert torch.isfinite(out).all()
    rel = _rel(out, before)
    assert 0 < rel <= REL_TOL[storage], rel

    assert mo.apply_options(model, weight_storage=storage).unet is opt.unet  # one shared copy
    assert _bitwise_equal(before_state, _state(model.unet))
    assert torch.equal(_run(model, text), before)


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize("storage", [mo.STORAGE_FP8_E4M3, mo.STORAGE_INT8, mo.STORAGE_NF4])
def test_t5_storage_is_close_and_leaves_the_loaded_t5_bit_identical(bundles, family, storage):
    model, text, _ = bundles[family]
    t5 = next(e for e in text.text_encoders if mo._is_t5(e))
    before_state = _state(t5)
    before_emb = encode_prompt(text, "a cat on a mat").embeds
    before = _run(model, text)

    opt = mo.apply_text_encoder_options(text, weight_storage=storage, apply_to=mo.ENCODERS_T5)
    new_t5 = next(e for e in opt.text_encoders if mo._is_t5(e))
    assert new_t5 is not t5 and mo.parameter_bytes(new_t5) < mo.parameter_bytes(t5)
    # the CLIP encoders are the loaded ones: "T5 only" leaves them alone
    assert all(a is b for a, b in zip(opt.text_encoders, text.text_encoders) if not mo._is_t5(a))
    emb = encode_prompt(opt, "a cat on a mat").embeds
    assert emb.shape == before_emb.shape and not torch.equal(emb, before_emb)
    assert _rel(emb, before_emb) <= T5_REL_TOL[storage]
    out = _run(model, opt)
    assert torch.isfinite(out).all() and _rel(out, before) <= T5_REL_TOL[storage]

    assert _bitwise_equal(before_state, _state(t5))
    assert torch.equal(encode_prompt(text, "a cat on a mat").embeds, before_emb)
    assert torch.equal(_run(model, text), before)


def test_all_encoders_storage_takes_the_clips_too(bundles):
    _, text, _ = bundles["sd3"]
    opt = mo.apply_text_encoder_options(text, weight_storage=mo.STORAGE_FP8_E4M3, apply_to=mo.ENCODERS_ALL)
    assert all(a is not b for a, b in zip(opt.text_encoders, text.text_encoders))
    assert all(torch.float8_e4m3fn in {p.dtype for p in e.parameters()} for e in opt.text_encoders)
    assert mo.apply_text_encoder_options(text) is text  # default: the loaded bundle itself


def test_t5_only_without_a_t5_names_the_fix():
    from diffusers_studio.nodes.engine.components import TextEncoderBundle

    clip = tiny_dit.tiny_sd3_components(0)["text_encoder"]
    bundle = TextEncoderBundle("sd1", "tiny-sd1", (None,), (clip,))
    with pytest.raises(ValueError, match=r"apply_to: 'T5 only'.*'tiny-sd1' has no T5.*all text encoders"):
        mo.apply_text_encoder_options(bundle, weight_storage=mo.STORAGE_FP8_E4M3, apply_to=mo.ENCODERS_T5)
    with pytest.raises(ValueError, match="apply_to: 'some'"):
        mo.apply_text_encoder_options(bundle, weight_storage=mo.STORAGE_FP8_E4M3, apply_to="some")


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_attention_choices_keep_the_familys_processors(bundles, family):
    model, text, _ = bundles[family]
    processors = dict(model.unet.attn_processors)
    before = _run(model, text)
    sdpa = _run(mo.apply_options(model, attention=mo.ATTENTION_SDPA), text)
    classic = _run(mo.apply_options(model, attention=mo.ATTENTION_CLASSIC), text)
    assert torch.equal(sdpa, before)
    assert (classic - before).abs().max().item() <= ATTN_TOL
    after = dict(model.unet.attn_processors)
    assert after.keys() == processors.keys() and all(after[k] is processors[k] for k in after)
    from torch.backends.cuda import flash_sdp_enabled, math_sdp_enabled

    assert flash_sdp_enabled() and math_sdp_enabled()  # the math-only restriction ended with the run


@pytest.mark.parametrize("family, expected", [
    ("flux", {"FluxTransformerBlock", "FluxSingleTransformerBlock"}),
    ("sd3", {"JointTransformerBlock"}),
])
def test_regional_compile_finds_the_repeated_blocks(bundles, family, expected):
    model, _, _ = bundles[family]
    opt = mo.apply_options(model, compile_unet=True)
    assert isinstance(opt.patches[-1], mo.CompileHook) and opt.unet is model.unet
    assert {type(b).__name__ for b in mo.CompileHook.blocks(model.unet)} == expected


def _lora(model):
    import dit_loras
    from diffusers_studio.nodes.engine import lora as lora_mod

    return lora_mod, lora_mod.lora_from_state_dict(dit_loras.peft_lora(model.unet, None, seed=6), "flux-lora.safetensors")


def test_a_lora_on_float8_storage_runs_in_either_order(bundles):
    model, text, _ = bundles["flux"]
    lora_mod, lora = _lora(model)
    with_lora = _run(lora_mod.apply_lora(model, text, lora)[0], text)
    before = _run(model, text)
    first = _run(lora_mod.apply_lora(mo.apply_options(model, weight_storage=mo.STORAGE_FP8_E4M3), text, lora)[0], text)
    second = _run(mo.apply_options(lora_mod.apply_lora(model, text, lora)[0], weight_storage=mo.STORAGE_FP8_E4M3), text)
    # measured: 1.0 % of max |x| from the float32 LoRA run; the LoRA itself moves it 27 %
    assert _rel(first, with_lora) <= REL_TOL[mo.STORAGE_FP8_E4M3] < _rel(with_lora, before)
    assert torch.equal(first, second)
    assert torch.equal(_run(model, text), before)


@pytest.mark.parametrize("storage", [mo.STORAGE_INT8, mo.STORAGE_NF4])
def test_a_lora_on_int8_or_nf4_storage_is_refused_naming_the_fix(bundles, storage):
    model, text, _ = bundles["flux"]
    lora_mod, lora = _lora(model)
    stored = mo.apply_options(model, weight_storage=storage)
    with pytest.raises(ValueError, match=rf"lora_name: 'flux-lora.safetensors' cannot be merged into a model stored "
                       rf"as '{re.escape(storage)}'.*float8_e4m3fn"):
        lora_mod.apply_lora(stored, text, lora)
    with pytest.raises(ValueError, match=rf"weight_storage: '{re.escape(storage)}' cannot take the LoRA "
                       r"'flux-lora.safetensors'"):
        mo.apply_options(lora_mod.apply_lora(model, text, lora)[0], weight_storage=storage)
    small_text = mo.apply_text_encoder_options(text, weight_storage=storage, apply_to=mo.ENCODERS_T5)
    with pytest.raises(ValueError, match=r"text encoders stored as .*strength_text_encoder to 0"):
        lora_mod.apply_lora(model, small_text, lora)
    lora_mod.apply_lora(model, small_text, lora, strength_text_encoder=0.0)
