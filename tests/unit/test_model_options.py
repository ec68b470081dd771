"""Model options: float8 storage on a shared copy, attention processors and compile as per-run hooks.

The base UNet is never changed: its state_dict stays bitwise equal and a run
without options after runs with them gives bitwise the same latents.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import replace

import pytest
import torch

from diffusers_studio.nodes.engine import model_options as mo
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle
from diffusers_studio.nodes.engine.sampling import sample

# Measured here on the tiny SD1 UNet (random weights), 3 Euler steps, float32
# compute, unscaled latents of max |x| ~221: max abs difference to the float32
# run 7.3 for float8_e4m3fn (3.3% of max |x|), 16.5 for float8_e5m2 (7.5%);
# against a float32 UNet whose weights were rounded to float8 the same way: 0.0.
FP8_REL_TOL = {"float8_e4m3fn": 0.05, "float8_e5m2": 0.10}
ATTN_TOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    from tiny_models import sd1_pipeline

    pipe = sd1_pipeline()
    pe, ne = pipe.encode_prompt("a cat", "cpu", 1, True, "")
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]
    model = ModelBundle("sd1", "tiny", pipe.unet, dict(pipe.scheduler.config), torch.float32,
                        latent_scaling_factor=pipe.vae.config.scaling_factor)
    yield model, Conditioning("sd1", pe, empty), Conditioning("sd1", ne, empty)
    mo.clear_stored_copies()


def _run(model, pos, neg):
    return sample(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=3, steps=3, cfg=5.0,
                  sampler_name="Euler")["samples"]


def _state(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def _bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("storage", [mo.STORAGE_FP8_E4M3, mo.STORAGE_FP8_E5M2])
def test_float8_storage_is_a_shared_copy_and_the_base_is_untouched(tiny, storage):
    model, pos, neg = tiny
    before_state = _state(model.unet)
    before = _run(model, pos, neg)

    opt = mo.apply_options(model, weight_storage=storage)
    assert opt is not model and opt.unet is not model.unet and model.patches == ()
    dtypes = {p.dtype for p in opt.unet.parameters()}
    assert mo.FLOAT8[storage] in dtypes
    assert all(p.dtype == torch.float32 for p in model.unet.parameters())
    saving = mo.parameter_bytes(model.unet) - mo.parameter_bytes(opt.unet)
    assert saving > 0

    out = _run(opt, pos, neg)
    assert torch.isfinite(out).all()
    rel = (out - before).abs().max().item() / before.abs().max().item()
    assert rel <= FP8_REL_TOL[storage], rel

    # exactly the float32 model with the cast weights rounded to float8
    rounded = copy.deepcopy(model.unet)
    stored = {n: p.dtype for n, p in opt.unet.named_parameters()}
    with torch.no_grad():
        for n, p in rounded.named_parameters():
            if stored[n] != torch.float32:
                p.copy_(p.to(stored[n]).float())
    assert (out - _run(replace(model, unet=rounded), pos, neg)).abs().max().item() <= ATTN_TOL

    # a second request for the same option shares the copy
    assert mo.apply_options(model, weight_storage=storage).unet is opt.unet
    assert _bitwise_equal(before_state, _state(model.unet))
    assert torch.equal(_run(model, pos, neg), before)


def _dequantized(stored_unet: torch.nn.Module, like: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of `like` whose Linear weights are `stored_unet`'s, dequantized.

    The quantized model should compute exactly this (up to the order of the
    scale multiply): the test then isolates the storage's rounding from the
    way the layers run.
    """
    import bitsandbytes.functional as bnbf

    reference = copy.deepcopy(like)
    stored = dict(stored_unet.named_modules())
    with torch.no_grad():
        for name, layer in reference.named_modules():
            if type(layer) is not torch.nn.Linear:
                continue
            weight = stored[name].weight
            if getattr(weight, "quant_state", None) is not None:  # bitsandbytes Params4bit
                value = bnbf.dequantize_4bit(weight.data, weight.quant_state)
            else:  # torchao's Int8Tensor
                value = weight.dequantize()
            layer.weight.copy_(value.float())
    return reference


# Measured on the tiny SD1 UNet (3 Euler steps, unscaled latents max |x| ~221):
# max abs difference to the float32 run 0.17 for int8 (0.08 % of max |x|) and
# 3.5 for NF4 (1.6 %); against the dequantized float32 reference 2.6e-6 of max
# |x| for int8 and 0.0 for NF4 (bitsandbytes dequantizes, then multiplies).
QUANT_KERNEL_REL_TOL = 1e-5
QUANT_REL_TOL = {mo.STORAGE_INT8: 0.005, mo.STORAGE_NF4: 0.05}
# Stored bytes on the tiny UNet: 0.71x (int8) and 0.66x (NF4) of float32; it is
# mostly convolutions, which both leave as they are (full-size: `make bench`).
QUANT_STORED_TYPES = {mo.STORAGE_INT8: "Int8Tensor", mo.STORAGE_NF4: "Params4bit"}


@pytest.mark.parametrize("storage", [mo.STORAGE_INT8, mo.STORAGE_NF4])
def test_int8_and_nf4_storage_are_shared_copies_that_compute_their_rounded_weights(tiny, storage):
    model, pos, neg = tiny
    before_state = _state(model.unet)
    before = _run(model, pos, neg)

    opt = mo.apply_options(model, weight_storage=storage)
    assert opt.unet is not model.unet
    kinds = {type(m.weight).__name__ for m in opt.unet.modules() if isinstance(m, torch.nn.Linear)}
    assert kinds == {QUANT_STORED_TYPES[storage]}, kinds
    assert mo.parameter_bytes(opt.unet) < mo.parameter_bytes(model.unet)

    out = _run(opt, pos, neg)
    assert torch.isfinite(out).all()
    rel = (out - before).abs().max().item() / before.abs().max().item()
    assert 0 < rel <= QUANT_REL_TOL[storage], rel
    reference = _run(replace(model, unet=_dequantized(opt.unet, model.unet)), pos, neg)
    # int8 multiplies by the scale after the matmul, the reference before it:
    # float32 rounding only (measured 2.6e-6 of max |x|)
    assert (out - reference).abs().max().item() / reference.abs().max().item() <= QUANT_KERNEL_REL_TOL

    assert mo.apply_options(model, weight_storage=storage).unet is opt.unet
    assert _bitwise_equal(before_state, _state(model.unet))
    assert torch.equal(_run(model, pos, neg), before)


class HostLinear(torch.nn.Linear):
    """A host's Linear subclass with only class attributes (as ComfyUI's castable layers are)."""

    comfy_cast_weights = False


def test_nf4_quantizes_a_hosts_linear_subclass_too():
    """Once ComfyUI manages a UNet its Linear layers are ComfyUI's subclass; NF4 must still take them."""
    net = torch.nn.Sequential(HostLinear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    mo._bitsandbytes_nf4(net, torch.float32)
    assert [type(m.weight).__name__ for m in net if hasattr(m, "weight")] == ["Params4bit", "Params4bit"]
    mo._bitsandbytes_nf4(net, torch.float32)  # already quantized layers are left as they are
    assert net(torch.randn(2, 64)).shape == (2, 32)


def test_stored_copy_leaves_out_the_hosts_registration(tiny):
    """A UNet that ComfyUI already manages (its handle in `_ds_patcher`) is copied without the handle."""
    from tiny_models import tiny_sd1_components

    unet = tiny_sd1_components(1)["unet"]
    handle = object()
    unet.__dict__["_ds_patcher"] = handle
    copied = mo.stored_copy(unet, mo.STORAGE_FP8_E4M3, torch.float32)
    assert unet.__dict__["_ds_patcher"] is handle
    assert copied.__dict__.get("_ds_patcher") is None


def test_stored_copy_goes_away_with_its_source():
    import gc

    from tiny_models import tiny_sd1_components

    unet = tiny_sd1_components(1)["unet"]
    mo.stored_copy(unet, mo.STORAGE_FP8_E4M3, torch.float32)
    assert len(mo.stored_copies_of(unet)) == 1
    count = len(mo._copies)
    del unet
    gc.collect()
    assert len(mo._copies) == count - 1


def test_attention_classic_and_sdpa_agree_and_processors_are_restored(tiny):
    model, pos, neg = tiny
    processors = dict(model.unet.attn_processors)
    before = _run(model, pos, neg)
    sdpa = _run(mo.apply_options(model, attention=mo.ATTENTION_SDPA), pos, neg)
    classic_model = mo.apply_options(model, attention=mo.ATTENTION_CLASSIC)
    classic = _run(classic_model, pos, neg)
    # compared in the UNet's (scaled) latent space, where DESIGN's 1e-4 applies;
    # measured: 3.4e-4 unscaled (max |x| ~221), 6.3e-5 scaled
    scale = model.latent_scaling_factor
    assert (sdpa - classic).abs().max().item() * scale <= ATTN_TOL
    assert (sdpa - before).abs().max().item() * scale <= ATTN_TOL
    after = dict(model.unet.attn_processors)
    assert after.keys() == processors.keys() and all(after[k] is processors[k] for k in after)
    assert torch.equal(_run(model, pos, neg), before)


def test_attention_hook_restores_even_on_cancel(tiny):
    from diffusers_studio.nodes.engine import hooks

    model, pos, neg = tiny
    processors = dict(model.unet.attn_processors)

    class Cancel(hooks.SamplingHook):
        def before_unet(self, step, run, role):
            raise KeyboardInterrupt("cancel")

    opt = mo.apply_options(model, attention=mo.ATTENTION_CLASSIC).with_patch(Cancel())
    with pytest.raises(KeyboardInterrupt):
        _run(opt, pos, neg)
    assert all(model.unet.attn_processors[k] is processors[k] for k in processors)


def _compile_works_quickly() -> str | None:
    """None if torch.compile runs a tiny module on this CPU within a few seconds, else why not."""
    try:
        start = time.monotonic()
        fn = torch.compile(torch.nn.Linear(4, 4))
        fn(torch.randn(2, 4))
        spent = time.monotonic() - start
    except Exception as exc:  # noqa: BLE001 - any failure means "skip, saying why"
        return f"torch.compile does not run on this CPU: {type(exc).__name__}: {exc}"[:300]
    if spent > 5:
        return f"torch.compile took {spent:.1f} s for a Linear on this CPU"
    return None


def test_compile_option_constructs_and_is_a_hook(tiny):
    model, _, _ = tiny
    opt = mo.apply_options(model, compile_unet=True)
    hook = opt.patches[-1]
    assert isinstance(hook, mo.CompileHook)
    assert mo.CompileHook.blocks(model.unet)  # the tiny UNet has repeated blocks
    assert opt.unet is model.unet


@pytest.mark.skipif(os.environ.get("DS_SLOW") != "1", reason="torch.compile took ~9 s for one Linear and "
                    "~15 s for the tiny UNet on this 2-core CPU (measured); DS_SLOW=1 runs it")
def test_compile_option_runs_and_restores(tiny):
    reason = _compile_works_quickly()
    if reason:
        pytest.skip(reason)
    model, pos, neg = tiny
    before = _run(model, pos, neg)
    opt = mo.apply_options(model, compile_unet=True)
    out = _run(opt, pos, neg)
    # measured with DS_SLOW=1: 2.6e-4 unscaled, 4.7e-5 in the UNet's scaled space
    assert (out - before).abs().max().item() * model.latent_scaling_factor <= ATTN_TOL
    assert all(b.__dict__.get("_compiled_call_impl") is None for b in mo.CompileHook.blocks(model.unet))
    assert torch.equal(_run(model, pos, neg), before)


def test_missing_packages_say_what_to_install(monkeypatch):
    monkeypatch.setattr(mo, "_has", lambda package: False)
    with pytest.raises(ValueError, match=r"weight_storage: 'int8 \(torchao\)' needs the torchao package.*"
                       r"pip install torchao"):
        mo.check_storage(mo.STORAGE_INT8)
    with pytest.raises(ValueError, match=r"weight_storage: 'nf4 \(bitsandbytes\)' needs the bitsandbytes package"
                       r".*pip install bitsandbytes"):
        mo.check_storage(mo.STORAGE_NF4)
    mo.check_storage(mo.STORAGE_FP8_E4M3)  # float8 needs nothing extra


def test_bad_values_name_the_input():
    with pytest.raises(ValueError, match="weight_storage: 'float4'"):
        mo.check_storage("float4")
    with pytest.raises(ValueError, match="attention: 'flash'"):
        mo.check_attention("flash")
