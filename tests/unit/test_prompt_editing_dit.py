"""Prompt editing and alternation on SD3 and Flux: the right text at the right step.

Every scheduled text is encoded as the plain prompt would be (CLIP window +
one T5 window of max_sequence_length), so a step's rows are exactly a plain
run's rows (torch.equal, recorded by a hook), pooled projection included.
Against diffusers: StableDiffusion3Pipeline and FluxPipeline with a
`callback_on_step_end` that swaps the prompt embeddings after A1111's switch
step (their documented way to change inputs between steps), to 1e-4. SD3's
callback can swap the pooled projection too; Flux's cannot, so its edit sits
past CLIP's 77-token window (the same pooled prompt for both texts) and only
T5 reads the change.
"""
from __future__ import annotations

import pytest
import torch

import tiny_dit
from diffusers_studio.nodes.engine import hooks
from diffusers_studio.nodes.engine.prompt_editing import editing_of, encode_with_editing
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.text_encoding import encode_prompt

TOL = 1e-4
SEED = 5
LATENT = 8
CASES = [("sd3", 4.0), ("flux-dev", 1.0), ("flux-schnell", 1.0)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-editing")
    tiny_dit.sd3_pipeline(0).save_pretrained(str(root / "sd3"), safe_serialization=True)
    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(root / "flux-dev"), safe_serialization=True)
    tiny_dit.flux_pipeline(0, dev=False).save_pretrained(str(root / "flux-schnell"), safe_serialization=True)
    return root


def _load(folders, name):
    return tiny_dit.load_cached(folders / name)


class Recorder(hooks.SamplingHook):
    """Runs last; keeps the text rows and pooled projections of each transformer call."""

    order = 100
    transformer_ready = True  # a read-only hook: the flow families take it

    def __init__(self):
        self.seen = []

    def before_unet(self, step, run, role):
        self.seen.append((step.encoder_hidden_states.clone(), step.added_cond_kwargs["pooled_projections"].clone()))


def _zeros():
    return {"samples": torch.zeros(1, 16, LATENT, LATENT)}


def _record(model, pos, neg, cfg, latent=None, **kw):
    recorder = Recorder()
    out = sample(model.with_patch(recorder), pos, neg, latent or _zeros(), seed=SEED, cfg=cfg,
                 sampler_name="Euler", **kw)
    return out["samples"], recorder.seen


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _plain_rows(model, text, words, cfg, neg="blurry"):
    return _record(model, encode_prompt(text, words), encode_prompt(text, neg), cfg, steps=2, end_step=1)[1][0]


@pytest.mark.parametrize("name,cfg", CASES)
def test_each_step_gets_the_plain_prompts_rows(folders, name, cfg):
    model, text, _ = _load(folders, name)
    cat, dog = _plain_rows(model, text, "a cat", cfg), _plain_rows(model, text, "a dog", cfg)
    assert not _same(cat, dog)
    edited = encode_with_editing(text, "a [cat:dog:0.5]")
    assert editing_of(edited) is not None
    _, seen = _record(model, edited, encode_prompt(text, "blurry"), cfg, steps=6)
    assert [_same(s, cat) for s in seen] == [True] * 4 + [False] * 2
    assert all(_same(s, dog) for s in seen[4:])


@pytest.mark.parametrize("name,cfg", CASES)
def test_alternation_and_an_edited_negative(folders, name, cfg):
    model, text, _ = _load(folders, name)
    _, seen = _record(model, encode_with_editing(text, "[a cat|a dog]"), encode_with_editing(text, "[blurry::2]"),
                      cfg, steps=4)
    negative_matters = cfg > 1.0  # Flux dev/schnell at cfg 1 run no negative rows
    # A1111's 0-based counter against 1-based ends: the first option holds steps 0 and 1.
    expect = [
        _plain_rows(model, text, "a cat", cfg), _plain_rows(model, text, "a cat", cfg),
        _plain_rows(model, text, "a dog", cfg), _plain_rows(model, text, "a cat", cfg, neg=""),
    ]
    assert [_same(s, e) for s, e in zip(seen, expect)] == [True] * 4
    if negative_matters:
        assert not _same(expect[0], expect[3])


@pytest.mark.parametrize("name,cfg", CASES)
def test_the_switch_is_a_run_continued_with_the_other_prompt(folders, name, cfg):
    """[cat:dog:3] over 6 steps is 'a cat' for steps 0-3, then 'a dog' from step 4 on the same schedule."""
    model, text, _ = _load(folders, name)
    neg = encode_prompt(text, "blurry")
    edited = sample(model, encode_with_editing(text, "a [cat:dog:3]"), neg, _zeros(), seed=SEED, steps=6, cfg=cfg,
                    sampler_name="Euler")["samples"]
    first = sample(model, encode_prompt(text, "a cat"), neg, _zeros(), seed=SEED, steps=6, cfg=cfg,
                   sampler_name="Euler", end_step=4)
    both = sample(model, encode_prompt(text, "a dog"), neg, first, seed=SEED, steps=6, cfg=cfg, sampler_name="Euler",
                  start_step=4)["samples"]
    cat_only = sample(model, encode_prompt(text, "a cat"), neg, _zeros(), seed=SEED, steps=6, cfg=cfg,
                      sampler_name="Euler")["samples"]
    assert (edited - both).abs().max() <= 1e-5
    assert (edited - cat_only).abs().max() > 100 * 1e-5


def _pipe(folders, name):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    pipe_cls = StableDiffusion3Pipeline if name == "sd3" else FluxPipeline
    return tiny_dit.pipeline_of(pipe_cls, _load(folders, name))


def test_sd3_matches_the_pipeline_with_a_swap_callback(folders):
    model, text, _ = _load(folders, "sd3")
    pipe = _pipe(folders, "sd3")
    dog, _, dog_pooled, _ = pipe.encode_prompt("a dog", "a dog", "a dog", device="cpu",
                                               do_classifier_free_guidance=False)

    def swap(pipe_, i, t, kwargs):  # after step 3: the positive half becomes "a dog" (A1111: steps 0-3 cat)
        if i != 3:
            return {}
        return {"prompt_embeds": torch.cat([kwargs["prompt_embeds"].chunk(2)[0], dog]),
                "pooled_prompt_embeds": torch.cat([kwargs["pooled_prompt_embeds"].chunk(2)[0], dog_pooled])}

    ref = pipe("a cat", negative_prompt="blurry", num_inference_steps=5, guidance_scale=4.0, height=64, width=64,
               generator=torch.Generator().manual_seed(SEED), output_type="latent", callback_on_step_end=swap,
               callback_on_step_end_tensor_inputs=["prompt_embeds", "pooled_prompt_embeds"]).images
    ours = sample(model, encode_with_editing(text, "a [cat:dog:3]"), encode_prompt(text, "blurry"), _zeros(),
                  seed=SEED, steps=5, cfg=4.0, sampler_name="Euler")["samples"]
    ref = ref / model.latent_scaling_factor + model.latent_shift_factor
    assert (ours - ref).abs().max() <= TOL
    cat = sample(model, encode_prompt(text, "a cat"), encode_prompt(text, "blurry"), _zeros(), seed=SEED, steps=5,
                 cfg=4.0, sampler_name="Euler")["samples"]
    assert (ours - cat).abs().max() > 10 * TOL  # the test can fail: the dog steps count


@pytest.mark.parametrize("name", ["flux-dev", "flux-schnell"])
def test_flux_matches_the_pipeline_with_a_swap_callback(folders, name):
    model, text, _ = _load(folders, name)
    pipe = _pipe(folders, name)
    lead = " ".join(["grass"] * 80)  # past CLIP's 77 tokens: both texts share the pooled prompt
    cat_words, dog_words = "a cat sitting on a red chair", "a dog running on green grass"
    dog = pipe.encode_prompt(f"{lead} {dog_words}", f"{lead} {dog_words}", device="cpu",
                             max_sequence_length=families_length(model))[0]

    def swap(pipe_, i, t, kwargs):
        return {"prompt_embeds": dog} if i == 1 else {}  # [cat:dog:1]: steps 0-1 cat, 2-4 dog

    ref = pipe(f"{lead} {cat_words}", num_inference_steps=5, height=64, width=64, max_sequence_length=families_length(model),
               generator=torch.Generator().manual_seed(SEED), output_type="latent", callback_on_step_end=swap,
               callback_on_step_end_tensor_inputs=["prompt_embeds"]).images
    ref = pipe._unpack_latents(ref, 64, 64, 8) / model.latent_scaling_factor + model.latent_shift_factor
    ours = sample(model, encode_with_editing(text, f"{lead} [{cat_words}:{dog_words}:1]"), None, _zeros(), seed=SEED, steps=5,
                  cfg=1.0, sampler_name="Euler")["samples"]
    assert (ours - ref).abs().max() <= TOL
    cat = sample(model, encode_prompt(text, f"{lead} {cat_words}"), None, _zeros(), seed=SEED, steps=5, cfg=1.0,
                 sampler_name="Euler")["samples"]
    assert (ours - cat).abs().max() > 10 * TOL  # the test can fail: the dog steps count


def families_length(model) -> int:
    from diffusers_studio.nodes.engine import families

    return families.of(model).default_max_sequence_length


def test_max_sequence_length_is_kept_for_every_scheduled_text(folders):
    model, text, _ = _load(folders, "flux-dev")
    edited = encode_with_editing(text, "a [cat|dog]", max_sequence_length=64)
    assert edited.embeds.shape[1] == 64
    _, seen = _record(model, edited, None, 1.0, steps=3)
    assert [s[0].shape[1] for s in seen] == [64, 64, 64]
    assert torch.equal(seen[2][0], encode_prompt(text, "a dog", max_sequence_length=64).embeds)
