"""Plain fp8 files keep their float8 weights on load (engine/float8_storage.py).

What must hold: the tensors the file stored as float8 stay float8 (one byte
per weight resident), everything else is in the compute dtype, and every
output is bit for bit that of the same model with the weights dequantized
(float8 converts exactly to float32 / bfloat16). A weight whose tensor is
swapped for a run (a LoRA merge) is the one computed with, and an exception
inside a layer leaves its weight float8. DSModelOptions' float8 on such a
model adds no second copy; another storage is made from the file's values.
"""
from __future__ import annotations

import copy

import pytest
import torch

from diffusers_studio.nodes.engine import float8_storage, model_options, single_file_dit
from dit_export import save_all_in_one, save_ae, save_clip, save_t5, save_transformer
from dit_tiny import tiny_flux_components, tiny_sd3_components, tokenizer_dirs

F32 = torch.float32
FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_components("dev")


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory, flux):
    root = tmp_path_factory.mktemp("fp8_split")
    return {
        "transformer": save_transformer(flux["transformer"], root / "flux1-dev-fp8.safetensors", "comfyui", fp8="fp8"),
        "clip_l": save_clip(flux["text_encoder"], root / "clip_l.safetensors"),
        "t5": save_t5(flux["text_encoder_2"], root / "t5xxl_fp8_e4m3fn.safetensors", fp8="fp8"),
        "ae": save_ae(flux["vae"], root / "ae.safetensors"),
    }


def _load_split(files, dtype):
    return single_file_dit.load_dit_split(files["transformer"], [files["clip_l"], files["t5"]], files["ae"],
                                          dtype=dtype, tokenizer_dirs=tokenizer_dirs())


def _dequantized_twin(original, loaded, dtype):
    """`original`'s architecture holding `loaded`'s values, every tensor in `dtype` (no float8 left)."""
    twin = copy.deepcopy(original).to(dtype)
    twin.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in loaded.state_dict().items()})
    return twin


def _float8_count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.dtype == FP8)


def _flux_forward(transformer):
    torch.manual_seed(0)
    cfg = transformer.config
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(1, 16, cfg.in_channels), encoder_hidden_states=torch.randn(1, 7, cfg.joint_attention_dim),
            pooled_projections=torch.randn(1, cfg.pooled_projection_dim), timestep=torch.tensor([0.5]),
            img_ids=torch.randn(16, 3), txt_ids=torch.zeros(7, 3), guidance=torch.tensor([3.5]), return_dict=False,
        )[0]


def test_flux_transformer_keeps_float8_and_computes_as_dequantized(flux_files, flux):
    loaded = _load_split(flux_files, F32)["transformer"]
    stored = _float8_count(loaded)
    assert stored > 0.5 * sum(p.numel() for p in loaded.parameters())  # the block weights, as the file has them
    assert float8_storage.float8_bytes(loaded) == stored
    assert loaded.dtype == F32  # ModelMixin.dtype reports the compute dtype
    assert model_options.storage_of(loaded) == "float8_e4m3fn"
    twin = _dequantized_twin(flux["transformer"], loaded, F32)
    assert _float8_count(twin) == 0
    assert torch.equal(_flux_forward(loaded), _flux_forward(twin))
    assert _float8_count(loaded) == stored  # every layer put its float8 tensor back


def test_sd3_all_in_one_plain_fp8_keeps_float8(tmp_path):
    original = tiny_sd3_components("sd35_medium")
    path = save_all_in_one(original, tmp_path / "sd3.5_medium_fp8.safetensors", fp8="fp8")
    loaded = single_file_dit.load_dit_checkpoint(path, dtype=F32, tokenizer_dirs=tokenizer_dirs())["transformer"]
    assert _float8_count(loaded) > 0
    twin = _dequantized_twin(original["transformer"], loaded, F32)
    cfg = loaded.config
    torch.manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, cfg.in_channels, 8, 8),
                  encoder_hidden_states=torch.randn(1, 7, cfg.joint_attention_dim),
                  pooled_projections=torch.randn(1, cfg.pooled_projection_dim), timestep=torch.tensor([500.0]),
                  return_dict=False)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs)[0], twin(**inputs)[0])


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16])
def test_t5_keeps_float8_and_its_feed_forward_computes_wide(flux_files, flux, dtype):
    t5 = _load_split(flux_files, dtype)["text_encoder_2"]
    assert _float8_count(t5) > 0
    twin = _dequantized_twin(flux["text_encoder_2"], t5, dtype)
    ids = torch.tensor([[37, 423, 9, 1, 0, 0]])
    with torch.no_grad():
        got, want = t5(ids).last_hidden_state, twin(ids).last_hidden_state
    # A feed-forward that cast its activations to wo's float8 would differ by far more than nothing.
    assert got.dtype == dtype
    assert torch.equal(got, want)


def test_a_swapped_weight_is_the_one_computed_with_and_errors_leave_float8():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    layer.weight.data = layer.weight.data.to(FP8)
    float8_storage.keep_float8(layer, F32)
    x = torch.randn(2, 8)
    merged = (layer.weight.data.float() + 0.5).to(FP8)  # what a LoRA merge puts in for one run
    original, layer.weight.data = layer.weight.data, merged
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, merged.float(), layer.bias))
    layer.weight.data = original
    with pytest.raises(RuntimeError):
        layer(torch.randn(2, 5))
    assert layer.weight.dtype == FP8 and layer.weight.data_ptr() == original.data_ptr()


def test_model_options_reuse_the_kept_float8_and_store_other_ways_from_the_files_values(flux_files, flux):
    loaded = _load_split(flux_files, F32)["transformer"]
    stored = _float8_count(loaded)
    assert model_options.stored_copy(loaded, model_options.STORAGE_FP8_E4M3, F32) is loaded
    e5m2 = model_options.stored_copy(loaded, model_options.STORAGE_FP8_E5M2, F32)
    assert e5m2 is not loaded and not float8_storage.is_kept(e5m2)
    assert model_options.storage_of(e5m2) == "float8_e5m2"
    assert any(p.dtype == torch.float8_e5m2 for p in e5m2.parameters())
    assert _float8_count(e5m2) == 0  # released: no e4m3 tensor of the file's left in the copy
    want = _flux_forward(loaded)
    got = _flux_forward(e5m2)
    assert got.dtype == F32 and not torch.equal(got, want)
    assert (got - want).abs().max() < 0.25 * want.abs().max()  # the same model, rounded once more
    assert _float8_count(loaded) == stored and float8_storage.is_kept(loaded)  # the source is untouched
    with pytest.raises(ValueError, match=r"weight_storage: 'float8_e4m3fn' cannot re-store a model already "
                                         r"stored as 'float8_e5m2'.*loader's MODEL"):
        model_options.stored_copy(e5m2, model_options.STORAGE_FP8_E4M3, F32)


def test_a_module_without_float8_is_left_untouched():
    layer = torch.nn.Linear(4, 4)
    assert float8_storage.keep_float8(layer, F32) is layer
    assert "_ds_weight_storage" not in layer.__dict__ and not hasattr(layer, "_diffusers_hook")
