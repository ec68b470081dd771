"""Diffusers modules under ComfyUI's partial loading (small GPUs, --lowvram, --novram).

`comfy_bridge.patcher_for` switches a module's plain torch layers to
comfy.ops classes and finishes partial loads with an ON_LOAD callback
(`nodes/comfy_cast.py`). These tests drive ComfyUI's real ModelPatcher: on a
GPU, a partial load leaves the layers that do not fit in system RAM and
streams their weights to the GPU at each call. Here the offload and compute
devices are both the CPU, so nothing actually travels; the CPU run proves
that ComfyUI's partial-load path is taken (it logs "loaded partially", marks
layers `comfy_cast_weights` and routes their forward through comfy.ops'
`cast_bias_weight`) and that the outputs stay the same.
"""
from __future__ import annotations

import logging

import pytest
import torch

MODEL = "tiny-sd15.safetensors"
CPU = torch.device("cpu")


@pytest.fixture
def modules():
    """A fresh tiny UNet, CLIP text encoder and VAE, never registered with ComfyUI."""
    import tiny_models

    parts = tiny_models.tiny_sd1_components(0)
    return parts["unet"].eval(), parts["text_encoder"].eval(), parts["vae"].eval()


def _outputs(unet, text_encoder, vae) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 7, unet.config.cross_attention_dim, generator=generator)
    ids = torch.randint(0, 49406, (1, 77), generator=generator)
    pixels = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        return [
            unet(sample, 10, encoder_hidden_states=context).sample,
            text_encoder(ids).last_hidden_state,
            vae.decode(vae.encode(pixels).latent_dist.mean).sample,
        ]


def _streamed(module: torch.nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if getattr(m, "comfy_cast_weights", False) is True]


@pytest.fixture
def cast_calls(monkeypatch):
    """Counts the calls of comfy.ops' weight cast (the streaming path), calling the real one."""
    import comfy.ops

    calls = []
    real = comfy.ops.cast_bias_weight

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.ops, "cast_bias_weight", counting)
    return calls


def test_registration_switches_plain_layers_and_keeps_outputs_bit_identical(modules):
    import comfy.ops

    from diffusers_studio.nodes import comfy_bridge

    before = _outputs(*modules)
    for module in modules:
        comfy_bridge.patcher_for(module)
        layers = [m for m in module.modules() if m._parameters]
        assert layers and all(isinstance(m, comfy.ops.CastWeightBiasOp) for m in layers)
    after = _outputs(*modules)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_layers_comfy_ops_cannot_stream_are_left_alone():
    import comfy.ops

    from diffusers_studio.nodes import comfy_cast

    class OwnLinear(torch.nn.Linear):  # a subclass has its own forward
        pass

    hooked = torch.nn.Linear(4, 4)
    hooked.forward = hooked.forward  # as diffusers' and accelerate's hooks wrap it
    quantized = torch.nn.Linear(4, 4)
    quantized.weight = torch.nn.Parameter(quantized.weight.detach().clone().as_subclass(_TensorSubclass))
    net = torch.nn.ModuleList([
        torch.nn.Linear(4, 4), torch.nn.Embedding(10, 4), OwnLinear(4, 4), hooked, quantized,
        torch.nn.GroupNorm(2, 4, affine=False),
    ])
    assert comfy_cast.make_castable(net) == 2
    assert type(net[0]) is comfy.ops.disable_weight_init.Linear
    assert type(net[1]) is comfy.ops.disable_weight_init.Embedding and net[1].bias is None
    assert [type(m) for m in net[2:]] == [OwnLinear, torch.nn.Linear, torch.nn.Linear, torch.nn.GroupNorm]


class _TensorSubclass(torch.Tensor):
    pass


def test_float8_weights_kept_from_a_file_still_switch_and_stream(cast_calls):
    """engine/float8_storage casts with torch hooks, not a replaced forward: ComfyUI can still stream the layers."""
    import comfy.ops

    from diffusers_studio.nodes import comfy_bridge
    from diffusers_studio.nodes.engine.float8_storage import keep_float8

    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(12)])
    for layer in net:
        layer.weight.data = layer.weight.data.to(torch.float8_e4m3fn)
    keep_float8(net, torch.float32)
    x = torch.randn(2, 64)
    with torch.no_grad():
        before = net(x)
    patcher = comfy_bridge.patcher_for(net)
    assert all(isinstance(layer, comfy.ops.CastWeightBiasOp) for layer in net)
    patcher.partially_load(CPU, extra_memory=2048)
    assert len(_streamed(net)) > 5
    with torch.no_grad():
        assert torch.equal(net(x), before)
    assert cast_calls
    assert all(layer.weight.dtype == torch.float8_e4m3fn for layer in net)
    patcher.detach()


def test_a_partial_load_streams_through_comfy_ops_and_unloading_restores_plain_layers(modules, caplog, cast_calls):
    from diffusers_studio.nodes import comfy_bridge

    before = _outputs(*modules)
    patchers = [comfy_bridge.patcher_for(m) for m in modules]
    with caplog.at_level(logging.INFO):
        for patcher in patchers:
            # What load_models_gpu does for a model that gets 2 KB of VRAM.
            patcher.partially_load(CPU, extra_memory=2048)
    assert caplog.text.count("loaded partially") == 3
    for module, patcher in zip(modules, patchers):
        streamed = _streamed(module)
        assert len(streamed) > 10 and patcher.model.model_lowvram
        # The first parameter's layer stays loaded: module.device reads it.
        first = next(module.named_parameters())[0].rsplit(".", 1)[0]
        assert first not in streamed
        assert all(b.device == CPU for b in module.buffers())
        assert patcher.loaded_size() > 0

    partial = _outputs(*modules)
    assert len(cast_calls) > 100
    assert all((a - b).abs().max() <= 1e-6 for a, b in zip(before, partial))

    for patcher in patchers:
        patcher.detach()
    cast_calls.clear()
    for module, patcher in zip(modules, patchers):
        assert _streamed(module) == [] and not patcher.model.model_lowvram
    assert all(torch.equal(a, b) for a, b in zip(before, _outputs(*modules)))
    assert cast_calls == []


class _Block(torch.nn.Module):
    """What ComfyUI's partial load leaves behind: a parent's own parameter and buffer, a non-castable layer."""

    class OwnLinear(torch.nn.Linear):
        pass

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))  # first parameter, in a non-leaf module
        self.register_buffer("offset", torch.zeros(4))
        self.big = torch.nn.Linear(64, 64)
        self.own = self.OwnLinear(4, 4)


def test_a_partial_load_brings_what_comfyui_cannot_stream_to_the_load_device():
    """The meta device stands in for the GPU: what ends up there was moved by the load."""
    from diffusers_studio.nodes import comfy_bridge

    block = _Block()
    patcher = comfy_bridge.patcher_for(block)
    patcher.partially_load(torch.device("meta"), extra_memory=1024)
    assert _streamed(block) == ["big"] and block.big.weight.device == CPU
    assert {t.device.type for t in (block.scale, block.offset, block.own.weight, block.own.bias)} == {"meta"}
    assert patcher.loaded_size() == 4 * (4 + 4 + 16 + 4)


def _graph(model, text_encoder, vae):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    positive = DSTextEncode.execute(text_encoder, "a photo of a cat", 1).args[0]
    negative = DSTextEncode.execute(text_encoder, "blurry", 1).args[0]
    latent = DSSampler.execute(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, 42, 3, 7.0,
                               "Euler", "normal", 1.0).args[0]
    return latent["samples"], DSVAEDecode.execute(vae, latent).args[0]


def test_sampling_after_a_forced_partial_load_matches_a_normal_run(models_dir, caplog, cast_calls, request):
    import comfy.model_management as mm

    from diffusers_studio.nodes.loaders import DSLoadModel

    model, text_encoder, vae = DSLoadModel.execute(MODEL, "float32").args
    mm.unload_all_models()
    latents, image = _graph(model, text_encoder, vae)
    assert cast_calls == []

    request.getfixturevalue("pretend_novram")
    with caplog.at_level(logging.INFO):
        partial_latents, partial_image = _graph(model, text_encoder, vae)
    assert caplog.text.count("loaded partially") >= 3  # text encoder, UNet, VAE
    assert len(cast_calls) > 100
    assert _streamed(model.unet)
    assert (partial_latents - latents).abs().max() <= 1e-6
    assert (partial_image - image).abs().max() <= 1e-6
