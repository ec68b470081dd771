"""IP-Adapter against diffusers' `load_ip_adapter`, and its contract.

Tiny adapters are written in the published h94 layout (tests/harness/
models_ip_adapter.py) into a folder that diffusers reads with
`load_ip_adapter(..., local_files_only=True)`; the same file goes through the
pack's loader and hook. Same image, scale, seed and steps give the same
latents to 1e-4 (float32): base and plus on SD1, base and the style mode on
SDXL, a masked adapter (diffusers' IPAdapterMaskProcessor path) and two
stacked adapters.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_studio.nodes.engine import hooks
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle
from diffusers_studio.nodes.engine.image_encoder import (
    HIDDEN_STATES,
    IMAGE_EMBEDS,
    ImageEncoder,
    embeds_cache,
    encode_images,
    load_image_encoder,
)
from diffusers_studio.nodes.engine.ip_adapter import apply_ip_adapter
from diffusers_studio.nodes.engine.ip_adapter_loading import IPAdapterLoadError, load_ip_adapter
from diffusers_studio.nodes.engine.sampling import sample
from harness import models_ip_adapter as tiny_ip

TOL = 1e-4
STEPS = 3
CFG = 5.0
SEED = 11


def _bundle(pipe, family):
    return ModelBundle(family, "tiny", pipe.unet, dict(pipe.scheduler.config), torch.float32,
                       latent_scaling_factor=pipe.vae.config.scaling_factor)


def _picture(seed=3, size=(40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def _image_tensor(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture).astype(np.float32) / 255.0)[None]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny adapters and encoders on disk, for the pack and for diffusers."""
    import tiny_models

    root = tmp_path_factory.mktemp("ip")
    sd1_unet = tiny_models.tiny_sd1_components(0)["unet"]
    sdxl_unet = tiny_models.tiny_sdxl_components(0)["unet"]
    h = tiny_ip.ENCODER_SHAPES[tiny_ip.VIT_H]
    g = tiny_ip.ENCODER_SHAPES[tiny_ip.VIT_BIGG]
    out = {"root": root}
    for name, unet, variant, embed, seed in [
        ("sd1-base.safetensors", sd1_unet, "base", h["projection_dim"], 1),
        ("sd1-base-2.safetensors", sd1_unet, "base", h["projection_dim"], 2),
        ("sd1-plus.safetensors", sd1_unet, "plus", h["hidden_size"], 3),
        ("sd1-full-face.safetensors", sd1_unet, "full-face", h["hidden_size"], 4),
        ("sdxl-base.safetensors", sdxl_unet, "base", g["projection_dim"], 5),
    ]:
        out[name] = tiny_ip.save_adapter(tiny_ip.adapter_state_dict(unet, variant, embed, seed), root / name)
    out["vit-h"] = tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_H, 0), root / tiny_ip.VIT_H)
    out["vit-g"] = tiny_ip.save_encoder_single_file(tiny_ip.tiny_image_encoder(tiny_ip.VIT_BIGG, 1),
                                                     root / tiny_ip.VIT_BIGG)
    return out


@pytest.fixture(scope="module")
def sd1(files):
    from tiny_models import sd1_pipeline

    pipe = sd1_pipeline()
    pe, ne = pipe.encode_prompt("a photo of a cat", "cpu", 1, True, "blurry")
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]
    data = {"pipe": pipe, "model": _bundle(pipe, "sd1"), "pe": pe, "ne": ne, "files": files,
            "pos": Conditioning("sd1", pe, empty), "neg": Conditioning("sd1", ne, empty)}
    data["plain"] = _ours(data, data["model"])
    return data


@pytest.fixture(scope="module")
def sdxl(files):
    from tiny_models import sdxl_pipeline

    pipe = sdxl_pipeline()
    pe, ne, pp, npool = pipe.encode_prompt("a photo of a cat", device="cpu", do_classifier_free_guidance=True,
                                           negative_prompt="blurry")
    empty = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)[0]
    return {"model": _bundle(pipe, "sdxl"), "pipe": pipe, "files": files,
            "kwargs": dict(prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
                           negative_pooled_prompt_embeds=npool),
            "pos": Conditioning("sdxl", pe, empty, pooled=pp), "neg": Conditioning("sdxl", ne, empty, pooled=npool)}


def _encoder(files, which="vit-h") -> ImageEncoder:
    return load_image_encoder(str(files[which]))


def _adapter(files, name, which="vit-h"):
    return load_ip_adapter(str(files[name]), _encoder(files, which), name=name)


def _ours(data, model, **kw):
    return sample(model, data["pos"], data["neg"], {"samples": torch.zeros(1, 4, 8, 8)}, seed=SEED, steps=STEPS,
                  cfg=CFG, sampler_name="DDIM", **kw)["samples"]


def _reference(data, weight_names, scale, images, encoder="vit-h", **call):
    """A diffusers pipeline on a copy of the UNet, with load_ip_adapter (it mutates its UNet)."""
    import copy

    files, base = data["files"], data["pipe"]
    components = dict(base.components, unet=copy.deepcopy(base.unet), image_encoder=None, feature_extractor=None)
    pipe = type(base)(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.register_modules(image_encoder=tiny_ip.tiny_image_encoder(
        tiny_ip.VIT_H if encoder == "vit-h" else tiny_ip.VIT_BIGG, 0 if encoder == "vit-h" else 1))
    pipe.load_ip_adapter(str(files["root"]), subfolder="", weight_name=weight_names, image_encoder_folder=None,
                         local_files_only=True)
    pipe.set_ip_adapter_scale(scale)
    return pipe(num_inference_steps=STEPS, guidance_scale=CFG, generator=torch.Generator().manual_seed(SEED),
                height=64, width=64, output_type="latent", ip_adapter_image=images, **call).images


def _diff(ours, ref, model):
    return (ours * model.latent_scaling_factor - ref).abs().max().item()


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", ["sd1-base.safetensors", "sd1-plus.safetensors", "sd1-full-face.safetensors"])
def test_sd1_matches_diffusers_load_ip_adapter(files, sd1, name):
    picture = _picture()
    ref = _reference(sd1, name, 0.7, picture, prompt_embeds=sd1["pe"], negative_prompt_embeds=sd1["ne"])
    model = apply_ip_adapter(sd1["model"], _adapter(files, name), images=_image_tensor(picture), weight=0.7)
    ours = _ours(sd1, model)
    plain = sd1["plain"]
    assert _diff(ours, ref, model) <= TOL
    assert (ours - plain).abs().max() > 1e-3, "the adapter had no visible effect"


def test_sdxl_base_matches_diffusers(files, sdxl):
    picture = _picture(5)
    ref = _reference(sdxl, "sdxl-base.safetensors", 0.8, picture, encoder="vit-g", **sdxl["kwargs"])
    model = apply_ip_adapter(sdxl["model"], _adapter(files, "sdxl-base.safetensors", "vit-g"),
                             images=_image_tensor(picture), weight=0.8)
    assert _diff(_ours(sdxl, model), ref, model) <= TOL


@pytest.mark.parametrize("mode,scale", [
    ("style", {"up": {"block_0": [0.0, 0.9, 0.0]}}),
    ("composition", {"down": {"block_1": [0.0, 0.9]}}),  # the tiny UNet's deepest down block is 1
])
def test_sdxl_weight_modes_match_diffusers_block_scales(files, sdxl, mode, scale):
    picture = _picture(6)
    ref = _reference(sdxl, "sdxl-base.safetensors", scale, picture, encoder="vit-g", **sdxl["kwargs"])
    model = apply_ip_adapter(sdxl["model"], _adapter(files, "sdxl-base.safetensors", "vit-g"),
                             images=_image_tensor(picture), weight=0.9, weight_mode=mode)
    assert _diff(_ours(sdxl, model), ref, model) <= TOL


def test_masked_adapter_matches_diffusers_mask_processor(files, sd1):
    from diffusers.image_processor import IPAdapterMaskProcessor

    picture = _picture(7)
    mask = torch.zeros(1, 64, 64)
    mask[:, 8:40, 16:64] = 1.0
    processed = IPAdapterMaskProcessor().preprocess(Image.fromarray((mask[0].numpy() * 255).astype(np.uint8)),
                                                   height=64, width=64)
    ref = _reference(sd1, "sd1-base.safetensors", 0.9, [picture], prompt_embeds=sd1["pe"],
                     negative_prompt_embeds=sd1["ne"], cross_attention_kwargs={"ip_adapter_masks": [processed]})
    model = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"), images=_image_tensor(picture),
                             weight=0.9, mask=mask)
    ours = _ours(sd1, model)
    assert _diff(ours, ref, model) <= TOL
    unmasked = _ours(sd1, apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"),
                                           images=_image_tensor(picture), weight=0.9))
    assert (ours - unmasked).abs().max() > 1e-3


def test_two_adapters_stack_like_diffusers(files, sd1):
    a, b = _picture(8), _picture(9)
    ref = _reference(sd1, ["sd1-base.safetensors", "sd1-plus.safetensors"], [0.6, 0.5], [a, b],
                     prompt_embeds=sd1["pe"], negative_prompt_embeds=sd1["ne"])
    model = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"), images=_image_tensor(a),
                             weight=0.6)
    model = apply_ip_adapter(model, _adapter(files, "sd1-plus.safetensors"), images=_image_tensor(b), weight=0.5)
    assert _diff(_ours(sd1, model), ref, model) <= TOL


# ---------------------------------------------------------------- contract
def test_variants_are_detected_from_the_keys(files):
    assert _adapter(files, "sd1-base.safetensors").variant == "base"
    plus = _adapter(files, "sd1-plus.safetensors")
    assert (plus.variant, plus.kind) == ("plus", HIDDEN_STATES)
    assert _adapter(files, "sd1-full-face.safetensors").variant == "full-face"
    assert _adapter(files, "sd1-base.safetensors").kind == IMAGE_EMBEDS


def test_no_leak_and_processors_restored(files, sd1):
    unet = sd1["model"].unet
    before_procs = dict(unet.attn_processors)
    plain = sd1["plain"]
    model = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-plus.safetensors"),
                             images=_image_tensor(_picture()), weight=1.0)
    _ours(sd1, model)
    after = _ours(sd1, sd1["model"])
    assert torch.equal(plain, after)
    assert all(unet.attn_processors[k] is v for k, v in before_procs.items())
    assert sd1["model"].patches == ()


def test_widened_batch_gets_image_tokens_on_the_added_positive_rows(files, sd1):
    class Widen(hooks.SamplingHook):
        order = -10

        def before_unet(self, step, run, role):
            b = run.batch
            step.x_in = torch.cat([step.x_in, step.x_in[-b:]])
            step.encoder_hidden_states = torch.cat([step.encoder_hidden_states, step.encoder_hidden_states[-b:]])
            step.row_roles = step.row_roles + [hooks.POSITIVE] * b

        def after_unet(self, noise_pred, step, run, role):
            b = run.batch
            base, extra = noise_pred[:-b], noise_pred[-b:]
            return torch.cat([base[:-b], (base[-b:] + extra) / 2])

    model = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"),
                             images=_image_tensor(_picture()), weight=0.8)
    alone = _ours(sd1, model)
    widened = _ours(sd1, model.with_patch(Widen()))
    assert (widened - alone).abs().max() <= 1e-5


def test_step_window_outside_the_run_changes_nothing(files, sd1):
    model = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"),
                             images=_image_tensor(_picture()), weight=1.0, start_percent=1.0, end_percent=1.0)
    assert torch.equal(_ours(sd1, model), sd1["plain"])
    half = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"),
                            images=_image_tensor(_picture()), weight=1.0, start_percent=0.0, end_percent=0.5)
    full = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"),
                            images=_image_tensor(_picture()), weight=1.0)
    assert (_ours(sd1, half) - _ours(sd1, full)).abs().max() > 1e-4


def test_empty_mask_has_no_effect_and_warns(files, sd1, caplog):
    model = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"),
                             images=_image_tensor(_picture()), weight=1.0, mask=torch.zeros(1, 32, 32))
    with caplog.at_level(logging.WARNING):
        ours = _ours(sd1, model)
    assert torch.equal(ours, sd1["plain"])
    assert any("mask is empty" in r.getMessage() for r in caplog.records)


def test_mask_of_another_size_is_resized(files, sd1):
    mask = torch.zeros(1, 100, 100)
    mask[:, :, 50:] = 1.0
    model = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"),
                             images=_image_tensor(_picture()), weight=1.0, mask=mask)
    assert torch.isfinite(_ours(sd1, model)).all()


def test_same_image_is_encoded_once(files):
    embeds_cache.clear()
    encoder = _encoder(files)
    image = _image_tensor(_picture(12))
    first = encode_images(encoder, image, IMAGE_EMBEDS)
    second = encode_images(encoder, image.clone(), IMAGE_EMBEDS)
    assert second is first and embeds_cache.hits == 1
    assert encode_images(encoder, image, HIDDEN_STATES) is not first


def test_mismatched_encoder_names_both_files(files):
    with pytest.raises(IPAdapterLoadError) as err:
        _adapter(files, "sdxl-base.safetensors", "vit-h")
    assert "sdxl-base.safetensors" in str(err.value) and tiny_ip.VIT_H in str(err.value)


def test_adapter_of_the_other_family_is_refused(files, sdxl):
    with pytest.raises(ValueError, match="family"):
        apply_ip_adapter(sdxl["model"], _adapter(files, "sd1-base.safetensors"), images=_image_tensor(_picture()))


def test_weight_mode_on_sd1_is_refused(files, sd1):
    with pytest.raises(ValueError, match="weight_mode"):
        apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"), images=_image_tensor(_picture()),
                         weight_mode="style")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_bin_with_code_is_refused_without_running_it(files, tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.bin"
    torch.save({"image_proj": {"proj.weight": torch.zeros(2, 2)}, "x": _RunsCode(str(marker))}, evil)
    with pytest.raises(IPAdapterLoadError, match="refused"):
        load_ip_adapter(str(evil), _encoder(files))
    assert not marker.exists()


def test_plain_bin_loads_like_safetensors(files, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(files["sd1-base.safetensors"]))
    nested = {"image_proj": {}, "ip_adapter": {}}
    for k, v in state.items():
        group, rest = k.split(".", 1)
        nested[group][rest] = v
    path = tmp_path / "ip-adapter_sd15.bin"
    torch.save(nested, path)
    adapter = load_ip_adapter(str(path), _encoder(files))
    ref = _adapter(files, "sd1-base.safetensors")
    assert adapter.variant == "base"
    assert all(torch.equal(a, b) for a, b in zip(adapter.weights.state_dict().values(), ref.weights.state_dict().values()))


def test_adapter_in_another_dtype_is_cast_for_the_run_only(files, sd1):
    picture = _image_tensor(_picture())
    same = apply_ip_adapter(sd1["model"], _adapter(files, "sd1-base.safetensors"), images=picture, weight=0.8)
    wide = load_ip_adapter(str(files["sd1-base.safetensors"]), _encoder(files), dtype=torch.float64)
    other = apply_ip_adapter(sd1["model"], wide, images=picture, weight=0.8)
    assert (_ours(sd1, same) - _ours(sd1, other)).abs().max() <= 1e-5
    assert next(wide.weights.parameters()).dtype == torch.float64


def test_negative_image_matches_diffusers_negative_embeds(files, sd1):
    """negative_images: CFG's negative rows see that picture's embedding, as the negative half of
    diffusers' `ip_adapter_image_embeds` (the SD pipelines' documented [negative, positive] layout)."""
    from transformers import CLIPImageProcessor

    picture, negative = _picture(12), _picture(13)
    encoder = tiny_ip.tiny_image_encoder(tiny_ip.VIT_H, 0)
    processor = CLIPImageProcessor(size=encoder.config.image_size, crop_size=encoder.config.image_size)
    with torch.no_grad():
        pos, neg = (encoder(processor(p, return_tensors="pt").pixel_values).image_embeds for p in (picture, negative))
    ref = _reference(sd1, "sd1-base.safetensors", 0.8, None, prompt_embeds=sd1["pe"],
                     negative_prompt_embeds=sd1["ne"], ip_adapter_image_embeds=[torch.cat([neg, pos])[:, None]])
    adapter = _adapter(files, "sd1-base.safetensors")
    model = apply_ip_adapter(sd1["model"], adapter, images=_image_tensor(picture), weight=0.8,
                             negative_images=_image_tensor(negative))
    ours = _ours(sd1, model)
    assert _diff(ours, ref, model) <= TOL
    default = _ours(sd1, apply_ip_adapter(sd1["model"], adapter, images=_image_tensor(picture), weight=0.8))
    assert (ours - default).abs().max() > 1e-3, "the negative image had no effect"
