"""ControlNet: loading, the sampling hook against diffusers, and hint preprocessors.

Parity: `apply_controlnet` + `sample()` reproduce StableDiffusionControlNetPipeline
and StableDiffusionXLControlNetPipeline (single unit, a step window, two units
with control_guidance_start/end lists, guess mode, a hint of another size) to
1e-4 in float32, on tiny ControlNets built from the tiny UNets
(harness.models_controlnet) with random output layers.
"""
from __future__ import annotations

import logging

import pytest
import torch

from diffusers_studio.nodes.engine import hooks
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle
from diffusers_studio.nodes.engine.controlnet import ControlNetBundle, apply_controlnet, prepare_hint
from diffusers_studio.nodes.engine.controlnet_loading import ModelLoadError, load_controlnet
from diffusers_studio.nodes.engine.hint_preprocessors import canny_edges, line_art_threshold
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.schedulers import make_scheduler
from harness import models_controlnet as mc

TOL = 1e-4
STEPS = 4
CFG = 7.5
SEED = 99


def _bundle(pipe, family: str) -> ModelBundle:
    return ModelBundle(family, "tiny-" + family, pipe.unet, dict(pipe.scheduler.config), torch.float32,
                       latent_scaling_factor=pipe.vae.config.scaling_factor)


def _hint(seed: int, h: int = 64, w: int = 64) -> torch.Tensor:
    """An IMAGE [1,H,W,3] in 0..1."""
    return torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _pt(image: torch.Tensor) -> torch.Tensor:
    """IMAGE -> the [B,3,H,W] tensor diffusers' pipelines take."""
    return image.movedim(-1, 1).contiguous()


def _cn(module, family: str, name: str = "tiny-cn") -> ControlNetBundle:
    return ControlNetBundle(family, name, module, torch.float32)


@pytest.fixture(scope="module")
def sd1():
    from diffusers import StableDiffusionControlNetPipeline
    from tiny_models import tiny_sd1_components

    comps = tiny_sd1_components(0)
    cn_a = mc.tiny_controlnet(comps["unet"], 0)
    cn_b = mc.tiny_controlnet(comps["unet"], 1)
    pipe = StableDiffusionControlNetPipeline(**comps, controlnet=cn_a, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pe, ne = pipe.encode_prompt("a photo of a house", "cpu", 1, True, "blurry")
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]
    return {
        "comps": comps, "pipe": pipe, "model": _bundle(pipe, "sd1"), "pe": pe, "ne": ne,
        "pos": Conditioning("sd1", pe, empty), "neg": Conditioning("sd1", ne, empty),
        "a": _cn(cn_a, "sd1", "a"), "b": _cn(cn_b, "sd1", "b"),
    }


@pytest.fixture(scope="module")
def sdxl():
    from diffusers import StableDiffusionXLControlNetPipeline
    from tiny_models import tiny_sdxl_components

    comps = tiny_sdxl_components(0)
    cn = mc.tiny_controlnet(comps["unet"], 0)
    pipe = StableDiffusionXLControlNetPipeline(**comps, controlnet=cn, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pe, ne, pp, npool = pipe.encode_prompt("a photo of a house", device="cpu", negative_prompt="blurry")
    empty = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)[0]
    return {
        "pipe": pipe, "model": _bundle(pipe, "sdxl"),
        "kwargs": dict(prompt_embeds=pe, negative_prompt_embeds=ne, pooled_prompt_embeds=pp,
                       negative_pooled_prompt_embeds=npool),
        "pos": Conditioning("sdxl", pe, empty, pooled=pp), "neg": Conditioning("sdxl", ne, empty, pooled=npool),
        "cn": _cn(cn, "sdxl"),
    }


def _plain(env, sampler="Euler"):
    """The run without ControlNet (computed once per model and sampler)."""
    cache = env.setdefault("plain", {})
    if sampler not in cache:
        cache[sampler] = _ours(env, env["pos"], env["neg"], sampler)
    return cache[sampler]


def _ours(env, pos, neg, sampler="Euler", **kw):
    return sample(env["model"], pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=SEED, steps=STEPS,
                  cfg=kw.pop("cfg", CFG), sampler_name=sampler, **kw)["samples"] * env["model"].latent_scaling_factor


def _ref(env, sampler="Euler", controlnet=None, **kw):
    pipe = env["pipe"]
    pipe.scheduler = make_scheduler(env["model"].scheduler_config, sampler, "normal")
    if controlnet is not None:
        from diffusers.models.controlnets import MultiControlNetModel

        pipe.controlnet = MultiControlNetModel(controlnet) if isinstance(controlnet, list) else controlnet
    prompt = env.get("kwargs") or dict(prompt_embeds=env["pe"], negative_prompt_embeds=env["ne"])
    return pipe(**prompt, num_inference_steps=STEPS, guidance_scale=kw.pop("guidance_scale", CFG),
                generator=torch.Generator().manual_seed(SEED), height=64, width=64, output_type="latent",
                **kw).images


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_sd1_controlnet_matches_diffusers(sd1, sampler):
    hint = _hint(1)
    pos, neg = apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], hint, strength=0.8)
    ours = _ours(sd1, pos, neg, sampler)
    ref = _ref(sd1, sampler, controlnet=sd1["a"].module, image=_pt(hint), controlnet_conditioning_scale=0.8)
    plain = _plain(sd1, sampler)
    assert (ours - plain).abs().max() > 1e-2  # the ControlNet really acts
    assert (ours - ref).abs().max() <= TOL


def test_sd1_step_window_matches_diffusers(sd1):
    hint = _hint(2)
    pos, neg = apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], hint, start_percent=0.25, end_percent=0.6)
    ref = _ref(sd1, controlnet=sd1["a"].module, image=_pt(hint), control_guidance_start=0.25,
               control_guidance_end=0.6)
    assert (_ours(sd1, pos, neg) - ref).abs().max() <= TOL


def test_sdxl_controlnet_matches_diffusers(sdxl):
    hint = _hint(3)
    pos, neg = apply_controlnet(sdxl["pos"], sdxl["neg"], sdxl["cn"], hint, strength=0.7)
    ours = _ours(sdxl, pos, neg)
    ref = _ref(sdxl, image=_pt(hint), controlnet_conditioning_scale=0.7)
    assert (ours - _plain(sdxl)).abs().max() > 1e-2
    assert (ours - ref).abs().max() <= TOL


def test_multi_controlnet_with_guidance_windows_matches_diffusers(sd1):
    h1, h2 = _hint(4), _hint(5)
    pos, neg = apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], h1, strength=1.0, start_percent=0.0,
                                end_percent=0.6)
    pos, neg = apply_controlnet(pos, neg, sd1["b"], h2, strength=0.5, start_percent=0.4, end_percent=1.0)
    assert len(hooks.collect(sd1["model"], pos, neg, {})) == 2
    ref = _ref(sd1, controlnet=[sd1["a"].module, sd1["b"].module], image=[_pt(h1), _pt(h2)],
               controlnet_conditioning_scale=[1.0, 0.5], control_guidance_start=[0.0, 0.4],
               control_guidance_end=[0.6, 1.0])
    assert (_ours(sd1, pos, neg) - ref).abs().max() <= TOL


def test_guess_mode_matches_diffusers(sd1):
    hint = _hint(6)
    pos, neg = apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], hint, guess_mode=True)
    ref = _ref(sd1, controlnet=sd1["a"].module, image=_pt(hint), guess_mode=True, guidance_scale=4.0)
    assert (_ours(sd1, pos, neg, cfg=4.0) - ref).abs().max() <= TOL


def test_hint_of_another_size_is_resized_like_diffusers(sd1):
    hint = _hint(7, 40, 52)
    assert prepare_hint(hint, (64, 64)).shape == (1, 3, 64, 64)
    pos, neg = apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], hint)
    ref = _ref(sd1, controlnet=sd1["a"].module, image=_pt(hint))
    assert (_ours(sd1, pos, neg) - ref).abs().max() <= TOL


# ------------------------------------------------------- masks, rows, leaks


def test_empty_mask_does_nothing_and_warns(sd1, caplog):
    plain = _plain(sd1)
    pos, neg = apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], _hint(8), mask=torch.zeros(1, 64, 64))
    with caplog.at_level(logging.WARNING):
        out = _ours(sd1, pos, neg)
    assert torch.equal(out, plain)
    assert any("mask is empty" in r.getMessage() for r in caplog.records)


def test_mask_limits_the_control_and_is_resized(sd1):
    hint = _hint(9)
    full = _ours(sd1, *apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], hint))
    ones = _ours(sd1, *apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], hint, mask=torch.ones(30, 30)))
    assert torch.equal(ones, full)
    mask = torch.zeros(1, 30, 30)
    mask[:, :, :15] = 1.0
    half = _ours(sd1, *apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], hint, mask=mask))
    plain = _plain(sd1)
    assert (half - full).abs().max() > 1e-3 and (half - plain).abs().max() > 1e-3


class _Spy(hooks.SamplingHook):
    """Runs after the ControlNet and records what it added per row."""

    order = 10

    def before_unet(self, step, run, role):
        self.rows = len(step.row_roles)
        self.row_norms = [float(step.mid_residual[k].abs().sum()) for k in range(step.x_in.shape[0])]


def test_positive_only_unit_acts_on_positive_rows(sd1):
    spy = _Spy()
    pos, _ = apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], _hint(10))
    sample(sd1["model"].with_patch(spy), pos, sd1["neg"], {"samples": torch.zeros(1, 4, 8, 8)}, seed=1,
           steps=2, cfg=CFG, sampler_name="Euler")
    assert spy.row_norms[0] == 0.0 and spy.row_norms[1] > 0.0


class _Widen(hooks.SamplingHook):
    """A regional-prompt-like hook: one extra positive row, folded back by averaging."""

    order = -10

    def before_unet(self, step, run, role):
        step.x_in = torch.cat([step.x_in, step.x_in[-1:]])
        step.encoder_hidden_states = torch.cat([step.encoder_hidden_states, step.encoder_hidden_states[-1:] * 0.5])
        step.row_roles = step.row_roles + [hooks.POSITIVE]

    def after_unet(self, noise_pred, step, run, role):
        return torch.cat([noise_pred[:1], (noise_pred[1:2] + noise_pred[2:3]) / 2])


def test_widened_batch_gets_residuals_for_every_row(sd1):
    spy = _Spy()
    pos, neg = apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], _hint(11))
    sample(sd1["model"].with_patch(_Widen()).with_patch(spy), pos, neg, {"samples": torch.zeros(1, 4, 8, 8)},
           seed=1, steps=2, cfg=CFG, sampler_name="Euler")
    assert spy.rows == 3 and all(n > 0 for n in spy.row_norms)


def test_no_leak_run_with_then_without_equals_fresh(sd1):
    before = {k: v.clone() for k, v in sd1["a"].module.state_dict().items()}
    fresh = _plain(sd1)
    _ours(sd1, *apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], _hint(12), mask=torch.ones(1, 8, 8)))
    after = _ours(sd1, sd1["pos"], sd1["neg"])
    assert torch.equal(fresh, after)
    assert sd1["pos"].extras == () and sd1["neg"].extras == ()
    assert all(torch.equal(v, sd1["a"].module.state_dict()[k]) for k, v in before.items())


def test_wrong_family_is_refused_at_sampling(sd1, sdxl):
    pos, neg = apply_controlnet(sdxl["pos"], sdxl["neg"], sd1["a"], _hint(13))
    with pytest.raises(ValueError, match=r"SD1\.x ControlNet, but the model 'tiny-sdxl' is SDXL"):
        _ours(sdxl, pos, neg)


@pytest.mark.parametrize("kw,match", [
    (dict(start_percent=0.6, end_percent=0.5), "start_percent"),
    (dict(strength=-1.0), "strength"),
    (dict(image=torch.zeros(64, 64, 3)), "image must be an IMAGE"),
    (dict(mask=torch.zeros(1, 1, 8, 8)), "mask must be a MASK"),
])
def test_bad_unit_inputs(sd1, kw, match):
    image = kw.pop("image", _hint(0))
    with pytest.raises(ValueError, match=match):
        apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], image, **kw)


def test_strength_zero_returns_the_inputs(sd1):
    assert apply_controlnet(sd1["pos"], sd1["neg"], sd1["a"], _hint(0), strength=0.0) == (sd1["pos"], sd1["neg"])


# ----------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return root / "controlnet", mc.write(root, 0)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loads_ldm_diffusers_single_files_and_folder(written):
    root, _ = written
    sd1 = load_controlnet(root / mc.SD15_CANNY, dtype="float32", use_cache=False)
    xl = load_controlnet(root / mc.SDXL_CANNY, dtype="float32", use_cache=False)
    folder = load_controlnet(root / mc.SD15_LINEART_FOLDER, dtype="float32", use_cache=False)
    assert (sd1.family, xl.family, folder.family) == ("sd1", "sdxl", "sd1")
    assert _same_weights(sd1.module, mc.tiny_sd1_controlnet(0))
    assert _same_weights(xl.module, mc.tiny_sdxl_controlnet(0))
    assert list(xl.module.config.transformer_layers_per_block) == [1, 2]
    assert not sd1.module.training and not any(p.requires_grad for p in sd1.module.parameters())


def test_sdxl_ldm_file_and_shuffle_name(tmp_path):
    cn = mc.tiny_sdxl_controlnet(0)
    path = mc.save_ldm_single_file(cn, tmp_path / "control_sdxl_shuffle.safetensors")
    loaded = load_controlnet(path, dtype="float32", use_cache=False)
    assert loaded.family == "sdxl" and _same_weights(loaded.module, cn)
    assert loaded.module.config.global_pool_conditions  # named *_shuffle, as lllyasviel's pooled ControlNet


def test_cache_gives_the_same_bundle_and_float16(written):
    root, _ = written
    a = load_controlnet(root / mc.SD15_CANNY, dtype="float16")
    assert load_controlnet(root / mc.SD15_CANNY, dtype="float16") is a
    assert next(a.module.parameters()).dtype == torch.float16


def test_pth_plain_weights_load_and_code_is_refused(tmp_path):
    cn = mc.tiny_sd1_controlnet(0)
    good = tmp_path / "control_v11p_sd15_canny.pth"
    torch.save(mc.controlnet_to_ldm(cn), good)
    assert _same_weights(load_controlnet(good, dtype="float32", use_cache=False).module, cn)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, bad)
    with pytest.raises(ModelLoadError, match="refused"):
        load_controlnet(bad, use_cache=False)


def test_not_a_controlnet_is_explained(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.lora_up.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="not a ControlNet"):
        load_controlnet(path, use_cache=False)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"nope")
    with pytest.raises(ModelLoadError, match="could not be read"):
        load_controlnet(broken, use_cache=False)


# ---------------------------------------------------------- preprocessors


def test_canny_finds_the_outline_of_a_square():
    image = torch.zeros(1, 32, 32, 3)
    image[:, 8:24, 8:24] = 1.0
    edges = canny_edges(image, 100, 200)
    assert edges.shape == (1, 32, 32, 3) and set(edges.unique().tolist()) <= {0.0, 1.0}
    e = edges[0, :, :, 0]
    assert e[:5].sum() == 0 and e[12:20, 12:20].sum() == 0  # flat areas have no edge
    assert e[8:24, 7:9].sum() >= 14 and e[8:24, 23:25].sum() >= 14  # left and right sides
    assert (e.sum(dim=1) <= 4).all() or e.sum() < 80  # thin (non-maximum suppressed)


def test_canny_thresholds_and_hysteresis():
    step = torch.zeros(1, 16, 16, 3)
    step[:, :, 8:] = 0.2  # grey 51: Sobel L1 gradient 4 * 51 = 204 across the step
    assert canny_edges(step, 100, 200).sum() > 0
    assert canny_edges(step, 100, 250).sum() == 0  # nothing strong enough to start an edge
    assert canny_edges(step * 0.2, 10, 30).sum() > 0 and canny_edges(step * 0.2, 100, 200).sum() == 0
    with pytest.raises(ValueError, match="low_threshold"):
        canny_edges(step, 200, 100)


def test_line_art_threshold():
    image = torch.ones(1, 8, 8, 3)
    image[:, 3, :] = 0.1  # a dark pencil line
    lines = line_art_threshold(image, 0.5)
    assert lines[0, 3].min() == 1.0 and lines[0, :3].max() == 0.0
    assert torch.equal(line_art_threshold(1 - image, 0.5, lines_are_dark=False), lines)
