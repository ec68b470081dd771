"""Prompt editing in the sampler: the right text at the right step, exactly.

Two references. diffusers: StableDiffusion[XL]Pipeline with a
`callback_on_step_end` that swaps the prompt embeddings after A1111's switch
step (its documented way to change inputs between steps), to 1e-4. And the
engine itself: a recording hook sees, step by step, the very tensors a run of
the plain prompt "cat" or "dog" feeds the UNet (torch.equal).
"""
from __future__ import annotations

import pytest
import torch

from diffusers_studio.nodes.engine import hooks
from diffusers_studio.nodes.engine.components import ModelBundle, TextEncoderBundle
from diffusers_studio.nodes.engine.prompt_editing import PromptEditing, editing_of, encode_with_editing
from diffusers_studio.nodes.engine.regional import add_region, rectangle_mask
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.schedulers import make_scheduler
from diffusers_studio.nodes.engine.text_encoding import encode_prompt
from tiny_models import sd1_pipeline, sdxl_pipeline

TOL = 1e-4
CFG = 7.5
SEED = 99


def _model(pipe, family: str) -> ModelBundle:
    return ModelBundle(
        family=family, name="tiny", unet=pipe.unet, scheduler_config=dict(pipe.scheduler.config),
        dtype=torch.float32, latent_scaling_factor=pipe.vae.config.scaling_factor,
    )


@pytest.fixture(scope="module")
def sd1():
    pipe = sd1_pipeline()
    pipe.set_progress_bar_config(disable=True)
    te = TextEncoderBundle("sd1", "tiny", (pipe.tokenizer,), (pipe.text_encoder,))
    return pipe, te, _model(pipe, "sd1")


@pytest.fixture(scope="module")
def sdxl():
    pipe = sdxl_pipeline()
    pipe.set_progress_bar_config(disable=True)
    te = TextEncoderBundle("sdxl", "tiny-xl", (pipe.tokenizer, pipe.tokenizer_2), (pipe.text_encoder, pipe.text_encoder_2))
    return pipe, te, _model(pipe, "sdxl")


def _zeros(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 4, 8, 8)}


class Recorder(hooks.SamplingHook):
    """Runs last; keeps what each UNet call receives."""

    order = 100

    def __init__(self):
        self.seen = []

    def before_unet(self, step, run, role):
        added = step.added_cond_kwargs or {}
        self.seen.append((step.encoder_hidden_states.clone(), added.get("text_embeds")))


def _record(model, pos, neg, latent=None, **kw):
    recorder = Recorder()
    out = sample(model.with_patch(recorder), pos, neg, latent or _zeros(), seed=SEED,
                 **{"sampler_name": "Euler", "cfg": CFG, **kw})
    return out, recorder.seen


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and (a[1] is None and b[1] is None or torch.equal(a[1], b[1]))


# ---------------------------------------------------------------- plain prompts


@pytest.mark.parametrize("text", ["(cat:1.3) BREAK [dog]", "a [cat] \\[b:3\\]"])
def test_plain_prompts_are_encode_prompt_exactly(sd1, text):
    _, te, model = sd1
    ours, plain = encode_with_editing(te, text), encode_prompt(te, text)
    assert ours.extras == () and editing_of(ours) is None
    assert torch.equal(ours.embeds, plain.embeds) and torch.equal(ours.empty_chunk, plain.empty_chunk)
    neg = encode_prompt(te, "blurry")
    a = sample(model, ours, neg, _zeros(), seed=SEED, steps=3, cfg=CFG, sampler_name="Euler a")
    b = sample(model, plain, neg, _zeros(), seed=SEED, steps=3, cfg=CFG, sampler_name="Euler a")
    assert torch.equal(a["samples"], b["samples"])


# ---------------------------------------------------------------- against diffusers


def _swap_after(step: int, embeds: torch.Tensor, pooled=None):
    """A diffusers callback: from the step after `step` on, the positive half is `embeds`."""

    def callback(pipe, i, t, kwargs):
        if i != step:
            return {}
        out = {"prompt_embeds": torch.cat([kwargs["prompt_embeds"].chunk(2)[0], embeds])}
        if pooled is not None:
            out["add_text_embeds"] = torch.cat([kwargs["add_text_embeds"].chunk(2)[0], pooled])
        return out

    return callback


@pytest.mark.parametrize("sampler,schedule", [("Euler", "normal"), ("DPM++ 2M", "karras")])
def test_sd1_cat_to_dog_matches_diffusers_with_a_swap_callback(sd1, sampler, schedule):
    pipe, te, model = sd1
    cat, neg = (encode_prompt(te, t) for t in ("a cat", "blurry"))
    edited = encode_with_editing(te, "a [cat:dog:0.3]")
    steps = 7  # schedule [(2, "a cat"), (7, "a dog")]: steps 0-2 draw the cat, 3-6 the dog (A1111's <=)
    pipe.scheduler = make_scheduler(model.scheduler_config, sampler, schedule)
    # The reference encodes its own prompts: the texts go in as a user writes them, and
    # the swapped-in "a dog" comes from the pipeline's own encode_prompt.
    dog = pipe.encode_prompt("a dog", "cpu", 1, False)[0]
    ref = pipe(
        "a cat", negative_prompt="blurry", num_inference_steps=steps, guidance_scale=CFG,
        generator=torch.Generator().manual_seed(SEED), height=64, width=64, output_type="latent",
        callback_on_step_end=_swap_after(2, dog), callback_on_step_end_tensor_inputs=["prompt_embeds"],
    ).images
    ours = sample(model, edited, neg, _zeros(), seed=SEED, steps=steps, cfg=CFG, sampler_name=sampler, schedule=schedule)
    scale = model.latent_scaling_factor
    assert (ours["samples"] * scale - ref).abs().max().item() <= TOL
    only_cat = sample(model, cat, neg, _zeros(), seed=SEED, steps=steps, cfg=CFG, sampler_name=sampler,
                      schedule=schedule)
    assert (ours["samples"] - only_cat["samples"]).abs().max().item() * scale > 10 * TOL


def test_sdxl_cat_to_dog_matches_diffusers_with_a_swap_callback(sdxl):
    pipe, te, model = sdxl
    neg = encode_prompt(te, "blurry")
    edited = encode_with_editing(te, "a [cat:dog:0.5]")
    pipe.scheduler = make_scheduler(model.scheduler_config, "Euler", "normal")
    dog, _, dog_pooled, _ = pipe.encode_prompt("a dog", device="cpu", do_classifier_free_guidance=False)
    ref = pipe(
        "a cat", negative_prompt="blurry", num_inference_steps=4, guidance_scale=CFG,
        generator=torch.Generator().manual_seed(SEED), height=64, width=64, output_type="latent",
        callback_on_step_end=_swap_after(2, dog, dog_pooled),
        callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"],
    ).images
    ours = sample(model, edited, neg, _zeros(), seed=SEED, steps=4, cfg=CFG, sampler_name="Euler")
    assert (ours["samples"] * model.latent_scaling_factor - ref).abs().max().item() <= TOL


# ---------------------------------------------------------------- step by step, exactly


def _plain_rows(model, te, text, neg="blurry", **kw):
    """What a run of the plain prompt feeds the UNet (its first call)."""
    return _record(model, encode_prompt(te, text), encode_prompt(te, neg) if neg is not None else None,
                   **{"steps": 2, "end_step": 1, **kw})[1][0]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_each_step_gets_the_plain_prompts_tensors(request, family):
    _, te, model = request.getfixturevalue(family)
    cat, dog = _plain_rows(model, te, "a cat"), _plain_rows(model, te, "a dog")
    _, seen = _record(model, encode_with_editing(te, "a [cat:dog:0.5]"), encode_prompt(te, "blurry"), steps=6)
    assert [_same(s, cat) for s in seen] == [True] * 4 + [False] * 2
    assert all(_same(s, dog) for s in seen[4:])


def test_alternation_long_prompts_and_an_edited_negative(sd1):
    _, te, model = sd1
    long_dog = "a dog, " + ", ".join(["green grass"] * 40)  # two chunks: the rows grow at that step
    pos = encode_with_editing(te, "[a cat|" + long_dog + "]")
    neg = encode_with_editing(te, "[blurry::2]")
    _, seen = _record(model, pos, neg, steps=4)
    # A1111's 0-based counter against 1-based ends: the first option holds steps 0 and 1.
    expect = [
        _plain_rows(model, te, "a cat", "blurry"),
        _plain_rows(model, te, "a cat", "blurry"),
        _plain_rows(model, te, long_dog, "blurry"),
        _plain_rows(model, te, "a cat", ""),
    ]
    assert seen[2][0].shape[1] == 154 and seen[3][0].shape[1] == 77
    assert [_same(s, e) for s, e in zip(seen, expect)] == [True] * 4


def test_img2img_counts_from_its_first_step_over_the_full_schedule(sd1):
    """A1111's img2img: [cat:dog:0.5] at 8 steps and denoise 0.5 runs 4 steps, all before step 4."""
    _, te, model = sd1
    init = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    cat = _plain_rows(model, te, "a cat")
    _, seen = _record(model, encode_with_editing(te, "a [cat:dog:0.5]"), encode_prompt(te, "blurry"),
                      latent=init, steps=8, denoise=0.5)
    assert len(seen) == 4 and all(_same(s, cat) for s in seen)
    _, seen = _record(model, encode_with_editing(te, "a [cat:dog:2]"), encode_prompt(te, "blurry"),
                      latent=init, steps=8, denoise=0.5)
    assert [_same(s, cat) for s in seen] == [True, True, True, False]


def test_a_continued_run_counts_on_from_start_step(sd1):
    _, te, model = sd1
    cat, dog = _plain_rows(model, te, "a cat"), _plain_rows(model, te, "a dog")
    edited, neg = encode_with_editing(te, "a [cat:dog:4]"), encode_prompt(te, "blurry")
    first, seen_a = _record(model, edited, neg, steps=8, end_step=3)
    _, seen_b = _record(model, edited, neg, first, steps=8, start_step=3)
    assert [_same(s, cat) for s in seen_a + seen_b] == [True] * 5 + [False] * 3
    assert all(_same(s, dog) for s in seen_b[2:])


def test_second_order_sampler_doubles_the_schedule(sd1):
    """Heun calls the UNet 2 x steps - 1 times; A1111 schedules second-order samplers over 2 x steps."""
    _, te, model = sd1
    cat = _plain_rows(model, te, "a cat")
    _, seen = _record(model, encode_with_editing(te, "a [cat:dog:0.5]"), encode_prompt(te, "blurry"),
                      steps=3, sampler_name="Heun")
    assert len(seen) == 5
    assert [_same(s, cat) for s in seen] == [True, True, True, True, False]  # schedule [(3, cat), (6, dog)]


def test_hires_pass_and_old_timelines(sd1):
    _, te, model = sd1
    cat, dog = _plain_rows(model, te, "a cat"), _plain_rows(model, te, "a dog")
    neg = encode_prompt(te, "blurry")
    hires = encode_with_editing(te, "a [cat:dog:1.5]", first_pass_steps=10)
    _, seen = _record(model, hires, neg, steps=4)  # (1.5 - 1) * 4 = 2: steps 0-2 cat
    assert [_same(s, cat) for s in seen] == [True, True, True, False] and _same(seen[3], dog)
    old = encode_with_editing(te, "a [cat:dog:1.5]", old_timelines=True)
    _, seen = _record(model, old, neg, steps=4)  # old: 1.5 is step 1
    assert [_same(s, cat) for s in seen] == [True, True, False, False]


def test_each_distinct_text_is_encoded_once_and_cached(sd1):
    _, te, model = sd1
    pos = encode_with_editing(te, "[a cat|a dog]")
    editing = editing_of(pos)
    assert isinstance(editing, PromptEditing) and set(editing.cache) == {"a cat"}
    neg = encode_prompt(te, "blurry")
    sample(model, pos, neg, _zeros(), seed=SEED, steps=3, cfg=CFG, sampler_name="Euler")
    assert set(editing.cache) == {"a cat", "a dog"}
    first = editing.cache["a dog"]
    sample(model, pos, neg, _zeros(), seed=SEED + 1, steps=4, cfg=CFG, sampler_name="Euler")
    assert editing.cache["a dog"] is first


def test_cfg_one_and_regions(sd1):
    _, te, model = sd1
    edited = encode_with_editing(te, "a [cat:dog:0.5]")
    cat = _record(model, encode_prompt(te, "a cat"), None, steps=2, cfg=1.0)[1][0]
    _, seen = _record(model, edited, None, steps=4, cfg=1.0)
    assert [_same(s, cat) for s in seen] == [True, True, True, False]
    # An edited base prompt with a region: the region rows follow the edited base rows.
    region = encode_prompt(te, "a hat")
    based = add_region(edited, rectangle_mask(64, 64, 0, 0, 32, 64), region)
    _, seen = _record(model, based, encode_prompt(te, "blurry"), steps=4)
    plain = _plain_rows(model, te, "a dog")
    assert torch.equal(seen[3][0][:2], plain[0]) and seen[3][0].shape[0] == 3
    with pytest.raises(ValueError, match="prompt editing"):
        add_region(encode_prompt(te, "a cat"), rectangle_mask(64, 64, 0, 0, 32, 64), edited)


def test_bad_first_pass_steps_is_named(sd1):
    _, te, _ = sd1
    with pytest.raises(ValueError, match="first_pass_steps"):
        encode_with_editing(te, "[a:b:3]", first_pass_steps=-2)
