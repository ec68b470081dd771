"""Flux / SD3 memory at the node level: weight storage for the transformer and T5, and ComfyUI's model management.

- DSModelOptions and DSTextEncoderOptions on a FLUX.1 model loaded by
  DSLoadModel: the graph runs, the result is close to the float32 one, and
  the loaded transformer and T5 are bit-identical afterwards.
- T5 and the transformer are separate loaded models in ComfyUI's model
  management: when room is needed for the transformer, ComfyUI's own
  `free_memory` unloads the text encoders and keeps the transformer, and a
  later encode brings them back with the same result.
- The transformer takes ComfyUI's partial loading (lowvram / novram) as the
  UNet does (tests/nodes/test_comfy_lowvram.py): "loaded partially", layers
  streamed through comfy.ops, the same latents.
"""
from __future__ import annotations

import logging

import pytest
import torch

import ldm_export
import tiny_dit

FLUX = "tiny-flux-dev"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def flux_models(models_dir):
    import folder_paths

    folder = models_dir / "diffusers"
    if not (folder / FLUX).exists():
        ldm_export.save_diffusers_folder(tiny_dit.flux_pipeline(0, dev=True), folder / FLUX)
    folder_paths.filename_list_cache.clear()
    return folder


def _load():
    from diffusers_studio.nodes.loaders import DSLoadModel

    return DSLoadModel.execute(FLUX, "float32").args


def _encode(text_encoder, prompt):
    from diffusers_studio.nodes.encode import DSTextEncode

    return DSTextEncode.execute(text_encoder, prompt, 1).args[0]


def _sample(model, text_encoder):
    from diffusers_studio.nodes.sample import DSSampler

    positive, negative = _encode(text_encoder, "a photo of a cat"), _encode(text_encoder, "")
    return DSSampler.execute(model, positive, negative, {"samples": torch.zeros(1, 16, 8, 8)}, 42, 3, 1.0,
                             "Euler", "normal", 1.0).args[0]["samples"]


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _t5(text_encoder):
    return next(e for e in text_encoder.text_encoders if type(e).__name__ == "T5EncoderModel")


def test_text_encoder_options_schema():
    from diffusers_studio.nodes.model_options import DSTextEncoderOptions

    schema = DSTextEncoderOptions.define_schema()
    assert schema.node_id == "DSTextEncoderOptions" and schema.category.endswith("/loaders") and schema.description
    assert [i.id for i in schema.inputs] == ["text_encoder", "weight_storage", "apply_to"]
    assert all(i.tooltip for i in schema.inputs) and all(o.tooltip for o in schema.outputs)
    assert DSTextEncoderOptions.validate_inputs("float8_e4m3fn", "T5 only") is True
    assert "weight_storage: 'fp4'" in DSTextEncoderOptions.validate_inputs("fp4", "T5 only")
    assert "apply_to: 'clip'" in DSTextEncoderOptions.validate_inputs("float8_e4m3fn", "clip")


def test_float8_transformer_and_t5_through_the_graph_leave_the_loaded_ones_exact(flux_models):
    from diffusers_studio.nodes.model_options import DSModelOptions, DSTextEncoderOptions

    model, text_encoder, _ = _load()
    transformer_state, t5_state = _state(model.unet), _state(_t5(text_encoder))
    before = _sample(model, text_encoder)

    small_model = DSModelOptions.execute(model, "float8_e4m3fn", "sdpa", False).args[0]
    small_text = DSTextEncoderOptions.execute(text_encoder, "float8_e4m3fn", "T5 only").args[0]
    assert any(p.dtype == torch.float8_e4m3fn for p in small_model.unet.parameters())
    assert any(p.dtype == torch.float8_e4m3fn for p in _t5(small_text).parameters())
    out = _sample(small_model, small_text)
    # measured: 0.5 % of max |x| on the tiny Flux (random weights)
    assert torch.isfinite(out).all() and 0 < (out - before).abs().max() / before.abs().max() <= 0.05

    for name, value in _state(model.unet).items():
        assert torch.equal(value, transformer_state[name]), name
    for name, value in _state(_t5(text_encoder)).items():
        assert torch.equal(value, t5_state[name]), name
    assert torch.equal(_sample(model, text_encoder), before)


def _loaded():
    import comfy.model_management as mm

    return {type(lm.model.model).__name__: lm for lm in mm.current_loaded_models if not lm.is_dead()}


def test_t5_and_the_transformer_are_separate_models_and_t5_gives_way(flux_models, monkeypatch):
    import comfy.model_management as mm

    from diffusers_studio.nodes import comfy_bridge

    model, text_encoder, _ = _load()
    mm.unload_all_models()
    before = _encode(text_encoder, "a lighthouse")
    _sample(model, text_encoder)
    loaded = _loaded()
    t5_name, transformer_name = (f"{n}{comfy_bridge.HOLDER_SUFFIX}" for n in ("T5EncoderModel", "FluxTransformer2DModel"))
    assert {t5_name, transformer_name} <= loaded.keys()
    assert loaded[t5_name].model is not loaded[transformer_name].model

    # What load_models_gpu does on a GPU short of memory for the transformer: free
    # the device, keeping what it is about to use. The CPU stands in for the GPU
    # (load_models_gpu itself never frees the CPU); the device reports no free memory.
    monkeypatch.setattr(mm, "get_free_memory", lambda *a, **k: (0, 0) if k.get("torch_free_too") else 0)
    mm.free_memory(1 << 40, loaded[transformer_name].device, keep_loaded=[loaded[transformer_name]])
    monkeypatch.undo()
    after = _loaded()
    assert t5_name not in after and transformer_name in after
    assert torch.equal(_encode(text_encoder, "a lighthouse").embeds, before.embeds)  # loaded again, same result
    assert t5_name in _loaded()
    mm.unload_all_models()


def test_the_transformer_takes_comfyuis_partial_loading(flux_models, caplog, request):
    import comfy.model_management as mm

    model, text_encoder, _ = _load()
    mm.unload_all_models()
    latents = _sample(model, text_encoder)

    request.getfixturevalue("pretend_novram")
    with caplog.at_level(logging.INFO):
        partial = _sample(model, text_encoder)
    lines = [line for line in caplog.text.splitlines() if "loaded partially" in line or "Requested" in line]
    # ComfyUI logs "Requested to load X" and then how X was loaded
    after = lines[[i for i, line in enumerate(lines) if "Requested to load FluxTransformer2DModel" in line][0] + 1]
    assert "loaded partially" in after, lines
    assert sum("Requested to load T5EncoderModel" in line for line in lines) == 1  # T5 on its own
    streamed = [n for n, m in model.unet.named_modules() if getattr(m, "comfy_cast_weights", False) is True]
    assert len(streamed) > 10
    assert (partial - latents).abs().max() <= 1e-6
