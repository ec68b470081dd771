"""Cancel (ComfyUI's interrupt flag) stops text encoding and VAE decoding mid-forward, sampling at the next step.

The UNet's layers skip comfy.ops' per-layer interrupt check while nothing
is streamed (nodes/comfy_fast_layers.py), since the sampler checks the flag
before every UNet evaluation. Text encoders and VAEs run once per prompt
and keep the per-layer check: a Cancel pressed during a long SDXL decode on
a CPU must not wait for the decode to finish. Each test raises the flag from
inside a module's forward (as the server's /interrupt does from another
thread) and checks where the run stopped.
"""
from __future__ import annotations

import pytest
import torch



@pytest.fixture
def flag():
    import comfy.model_management as mm

    mm.interrupt_current_processing(False)
    yield mm
    mm.interrupt_current_processing(False)


def _raise_flag_in(module, mm, seen: list):
    def hook(_module, _inputs, _output):
        seen.append("raised")
        mm.interrupt_current_processing(True)
    return module.register_forward_hook(hook)


def _record(module, seen: list, name: str):
    return module.register_forward_hook(lambda *_: seen.append(name))


def _bundles(name):
    from diffusers_studio.nodes.loaders import DSLoadModel

    return DSLoadModel.execute(name, "float32").args


@pytest.mark.parametrize("name", ["tiny-sd15.safetensors", "tiny-sdxl.safetensors"])
def test_text_encoding_stops_between_layers(models_dir, flag, name):
    from diffusers_studio.nodes.encode import DSTextEncode

    _, text_encoder, _ = _bundles(name)
    encoder = text_encoder.text_encoders[0]
    named = dict(encoder.named_modules())  # transformers 5 dropped CLIPTextModel's text_model level
    prefix = "text_model." if "text_model.encoder" in named else ""
    seen: list = []
    handles = [_raise_flag_in(named[prefix + "encoder.layers.1"], flag, seen),
               _record(named[prefix + "final_layer_norm"], seen, "final norm")]
    try:
        with pytest.raises(flag.InterruptProcessingException):
            DSTextEncode.execute(text_encoder, "a cat stopped mid-encoding", 1)
    finally:
        for h in handles:
            h.remove()
    assert seen == ["raised"]  # nothing after layer 1 ran
    assert not flag.processing_interrupted()  # the flag was consumed, the next prompt runs
    DSTextEncode.execute(text_encoder, "a cat", 1)


def test_vae_decode_stops_between_layers(models_dir, flag):
    from diffusers_studio.nodes.vae import DSVAEDecode

    _, _, vae = _bundles("tiny-sd15.safetensors")
    decoder = vae.vae.decoder
    seen: list = []
    handles = [_raise_flag_in(decoder.mid_block, flag, seen), _record(decoder.conv_out, seen, "conv_out")]
    try:
        with pytest.raises(flag.InterruptProcessingException):
            DSVAEDecode.execute(vae, {"samples": torch.zeros(1, 4, 8, 8)})
    finally:
        for h in handles:
            h.remove()
    assert seen == ["raised"]


def test_sampling_stops_before_the_next_unet_call(models_dir, flag):
    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.sample import DSSampler

    model, text_encoder, _ = _bundles("tiny-sd15.safetensors")
    positive = DSTextEncode.execute(text_encoder, "a cat", 1).args[0]
    negative = DSTextEncode.execute(text_encoder, "", 1).args[0]
    seen: list = []
    handle = _raise_flag_in(model.unet, flag, seen)
    try:
        with pytest.raises(flag.InterruptProcessingException):
            DSSampler.execute(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)},
                              5, 20, 7.0, "Euler", "normal", 1.0)
    finally:
        handle.remove()
    assert seen == ["raised"]  # one UNet evaluation, then the sampler's check stopped the run
