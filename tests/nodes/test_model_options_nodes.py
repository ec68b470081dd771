"""DSModelOptions as ComfyUI calls it: schema, validation, a float8 run through DSSampler, the base untouched."""
from __future__ import annotations

import pytest
import torch

MODEL = "tiny-sd15.safetensors"


def _node():
    from diffusers_studio.nodes.model_options import DSModelOptions

    return DSModelOptions


def test_schema_has_tooltips_and_the_choices():
    schema = _node().define_schema()
    assert schema.node_id == "DSModelOptions" and schema.category.endswith("/loaders")
    assert [i.id for i in schema.inputs] == ["model", "weight_storage", "attention", "compile_unet"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    storage = schema.inputs[1]
    assert "float8_e4m3fn" in storage.options and "int8 (torchao)" in storage.options


def test_validate_inputs_names_the_input():
    node = _node()
    assert node.validate_inputs("default", "sdpa", False) is True
    assert "weight_storage: 'fp4'" in node.validate_inputs("fp4", "sdpa", False)
    assert "attention: 'flash'" in node.validate_inputs("default", "flash", False)


def test_missing_torchao_says_what_to_install(models_dir, monkeypatch):
    from diffusers_studio.nodes.engine import model_options as mo
    from diffusers_studio.nodes.loaders import DSLoadModel

    monkeypatch.setattr(mo, "_has", lambda package: False)
    model = DSLoadModel.execute(MODEL, "float32").args[0]
    with pytest.raises(ValueError, match=r"needs the torchao package.*pip install torchao"):
        _node().execute(model, "int8 (torchao)", "sdpa", False)


def test_float8_through_the_sampler_leaves_the_loaded_model_exact(models_dir):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler

    model, text_encoder, _ = DSLoadModel.execute(MODEL, "float32").args
    positive = DSTextEncode.execute(text_encoder, "a photo of a cat", 1).args[0]
    negative = DSTextEncode.execute(text_encoder, "blurry", 1).args[0]

    def run(m):
        return DSSampler.execute(m, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, 42, 3, 7.0,
                                 "Euler", "normal", 1.0).args[0]["samples"]

    state = {k: v.clone() for k, v in model.unet.state_dict().items()}
    before = run(model)
    options = _node().execute(model, "float8_e4m3fn", "sdpa", False).args[0]
    assert options.unet is not model.unet
    assert any(p.dtype == torch.float8_e4m3fn for p in options.unet.parameters())
    assert _node().execute(model, "float8_e4m3fn", "classic (no sdpa)", False).args[0].unet is options.unet
    out = run(options)
    assert torch.isfinite(out).all()
    assert (out - before).abs().max() <= 0.05 * before.abs().max()
    assert all(torch.equal(state[k], v) for k, v in model.unet.state_dict().items())
    assert torch.equal(run(model), before)


@pytest.mark.parametrize("storage, stored_type", [("int8 (torchao)", "Int8Tensor"), ("nf4 (bitsandbytes)", "Params4bit")])
def test_quantized_storage_of_a_model_comfyui_already_manages(models_dir, storage, stored_type):
    """After a run the UNet's layers are ComfyUI's castable subclasses; int8 and NF4 still take them."""
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler

    model, text_encoder, _ = DSLoadModel.execute(MODEL, "float32").args
    positive = DSTextEncode.execute(text_encoder, "a photo of a cat", 1).args[0]
    negative = DSTextEncode.execute(text_encoder, "blurry", 1).args[0]

    def run(m):
        return DSSampler.execute(m, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, 7, 2, 7.0,
                                 "Euler", "normal", 1.0).args[0]["samples"]

    before = run(model)  # registers the UNet with ComfyUI's model management
    assert any(hasattr(type(m), "comfy_cast_weights") for m in model.unet.modules())
    options = _node().execute(model, storage, "as loaded", False).args[0]
    linears = [m for m in options.unet.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and {type(m.weight).__name__ for m in linears} == {stored_type}
    out = run(options)
    assert torch.isfinite(out).all() and not torch.equal(out, before)
    assert (out - before).abs().max() <= 0.05 * before.abs().max()
    assert torch.equal(run(model), before)
