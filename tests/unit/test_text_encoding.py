"""encode_prompt against diffusers' own encode_prompt on tiny SD1/SDXL/SDXL refiner encoders."""
from __future__ import annotations

import contextlib
import copy
import logging

import pytest
import torch

from diffusers_studio.nodes.engine.components import Conditioning, TextEncoderBundle
from diffusers_studio.nodes.engine.text_encoding import (
    CHUNK_TOKENS,
    TokenChunk,
    apply_emphasis,
    chunk_input_ids,
    encode_prompt,
    tokenize_prompt,
)
from tiny_models import sd1_pipeline, sdxl_pipeline, sdxl_refiner_pipeline

PROMPTS = ["a photo of a cat", "A castle on a hill, golden hour, highly detailed"]
WORDS = "cat dog house tree river sky castle cloud mountain flower".split()
LONG_PROMPT = " ".join(WORDS[i % len(WORDS)] for i in range(200))  # no commas
DEVICE = torch.device("cpu")


def diffusers_clip_skip(clip_skip: int):
    """A1111's clip_skip n is diffusers' n - 1 (None for "no skip")."""
    return None if clip_skip == 1 else clip_skip - 1


@pytest.fixture(scope="module")
def sd1():
    pipe = sd1_pipeline()
    bundle = TextEncoderBundle(
        family="sd1", name="tiny", tokenizers=(pipe.tokenizer,), text_encoders=(pipe.text_encoder,)
    )
    return pipe, bundle


@pytest.fixture(scope="module")
def sdxl():
    pipe = sdxl_pipeline()
    bundle = TextEncoderBundle(
        family="sdxl",
        name="tiny-xl",
        tokenizers=(pipe.tokenizer, pipe.tokenizer_2),
        text_encoders=(pipe.text_encoder, pipe.text_encoder_2),
    )
    return pipe, bundle


@pytest.fixture(scope="module")
def refiner():
    """The refiner: bigG alone (StableDiffusionXLImg2ImgPipeline with text_encoder=None)."""
    pipe = sdxl_refiner_pipeline()
    bundle = TextEncoderBundle(
        family="sdxl", name="tiny-refiner", tokenizers=(pipe.tokenizer_2,), text_encoders=(pipe.text_encoder_2,),
        variant="refiner",
    )
    return pipe, bundle


@contextlib.contextmanager
def diffusers_can_clip_skip(encoder):
    """Let diffusers 0.42's SD1 clip_skip path run on transformers >= 5.6.

    transformers 5.6 removed CLIPTextModel's `text_model` wrapper, and diffusers'
    encode_prompt still reads `text_encoder.text_model.final_layer_norm`
    (huggingface/diffusers#14124, fix pending in #14043). For the reference
    only, alias the model as its own `text_model` (outside the module tree).
    """
    if hasattr(encoder, "text_model"):
        yield
        return
    object.__setattr__(encoder, "text_model", encoder)
    try:
        yield
    finally:
        object.__delattr__(encoder, "text_model")


def encode_ids(encoder, ids):
    with torch.no_grad():
        return encoder(ids)[0]


# --- parity with diffusers ------------------------------------------------------


@pytest.mark.parametrize("clip_skip", [1, 2])
@pytest.mark.parametrize("prompt", PROMPTS + [""])
def test_sd1_matches_diffusers(sd1, prompt, clip_skip):
    pipe, bundle = sd1
    with diffusers_can_clip_skip(pipe.text_encoder):
        expected, _ = pipe.encode_prompt(prompt, DEVICE, 1, False, clip_skip=diffusers_clip_skip(clip_skip))
    cond = encode_prompt(bundle, prompt, clip_skip=clip_skip)
    assert isinstance(cond, Conditioning) and cond.family == "sd1"
    assert cond.embeds.shape == expected.shape == (1, 77, 32)
    assert (cond.embeds - expected).abs().max() <= 1e-6
    assert cond.pooled is None


@pytest.mark.parametrize("clip_skip", [1, 2])
@pytest.mark.parametrize("prompt", PROMPTS + [""])
def test_sdxl_matches_diffusers(sdxl, prompt, clip_skip):
    pipe, bundle = sdxl
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=prompt,
        device=DEVICE,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        clip_skip=diffusers_clip_skip(clip_skip),
    )
    cond = encode_prompt(bundle, prompt, clip_skip=clip_skip)
    assert cond.family == "sdxl"
    assert cond.embeds.shape == embeds.shape == (1, 77, 64)
    assert (cond.embeds - embeds).abs().max() <= 1e-6
    assert cond.pooled.shape == pooled.shape == (1, 32)
    assert (cond.pooled - pooled).abs().max() <= 1e-6


@pytest.mark.parametrize("clip_skip", [1, 2])
@pytest.mark.parametrize("prompt", PROMPTS + [""])
def test_sdxl_refiner_matches_diffusers(refiner, prompt, clip_skip):
    """bigG's penultimate hidden states (1280 wide for the real one) and its projection."""
    pipe, bundle = refiner
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompt=prompt,
        device=DEVICE,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        clip_skip=diffusers_clip_skip(clip_skip),
    )
    cond = encode_prompt(bundle, prompt, clip_skip=clip_skip)
    assert (cond.family, cond.variant) == ("sdxl", "refiner")
    assert cond.embeds.shape == embeds.shape == (1, 77, 32)
    assert torch.equal(cond.embeds, embeds)
    assert cond.pooled.shape == pooled.shape == (1, 32)
    assert torch.equal(cond.pooled, pooled)
    # No negative prompt: force_zeros_for_empty_prompt is False for the refiner,
    # so diffusers encodes "" (not zeros), as an empty Diffusers Text Encode does.
    empty = encode_prompt(bundle, "")
    assert pipe.config.force_zeros_for_empty_prompt is False
    if clip_skip == 1:  # diffusers encodes the negative at the penultimate layer whatever clip_skip is
        assert torch.equal(empty.embeds, negative) and torch.equal(empty.pooled, negative_pooled)
        assert torch.equal(cond.empty_chunk, empty.embeds)


def test_sdxl_refiner_long_prompts_and_emphasis(refiner):
    _, bundle = refiner
    cond = encode_prompt(bundle, LONG_PROMPT)
    assert cond.embeds.shape == (1, 77 * 3, 32)
    weighted = encode_prompt(bundle, "a (cat:1.5) on a hill")
    assert not torch.equal(weighted.embeds, encode_prompt(bundle, "a cat on a hill").embeds)


def test_refiner_bundle_needs_exactly_one_encoder(sdxl):
    _, bundle = sdxl
    wrong = TextEncoderBundle(
        family="sdxl", name="x", tokenizers=bundle.tokenizers, text_encoders=bundle.text_encoders, variant="refiner"
    )
    with pytest.raises(ValueError, match="SDXL refiner text encoder needs 1"):
        encode_prompt(wrong, "a cat")


def test_plain_prompt_is_bit_identical_to_diffusers(sd1):
    pipe, bundle = sd1
    expected, _ = pipe.encode_prompt(PROMPTS[0], DEVICE, 1, False)
    assert torch.equal(encode_prompt(bundle, PROMPTS[0]).embeds, expected)


# --- tokenizing and chunks ------------------------------------------------------


def test_chunk_ids_match_the_tokenizers_padding(sdxl):
    _, bundle = sdxl
    for tokenizer in bundle.tokenizers:  # CLIP-L pads with EOS, tokenizer_2 with "!" (0)
        expected = tokenizer(PROMPTS[1], padding="max_length", max_length=77, truncation=True).input_ids
        (chunk,) = tokenize_prompt(tokenizer, PROMPTS[1])
        assert chunk_input_ids(tokenizer, chunk).tolist() == [expected]
    assert chunk_input_ids(bundle.tokenizers[1], TokenChunk()).tolist()[0][:3] == [49406, 49407, 0]


def test_exactly_75_tokens_is_one_chunk_and_76_is_two(sd1):
    _, bundle = sd1
    tokenizer = bundle.tokenizers[0]
    assert len(tokenize_prompt(tokenizer, " ".join(["cat"] * 75))) == 1
    chunks = tokenize_prompt(tokenizer, " ".join(["cat"] * 76))
    assert [len(chunk.ids) for chunk in chunks] == [75, 1]


def test_words_after_a_recent_comma_move_to_the_next_chunk(sd1):
    _, bundle = sd1
    tokenizer = bundle.tokenizers[0]
    # 70 words, a comma (token 71), then 10 more: the cut comes after the comma.
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks = tokenize_prompt(tokenizer, prompt)
    assert [len(chunk.ids) for chunk in chunks] == [71, 10]
    assert chunks[0].ids[-1] == tokenizer.get_vocab()[",</w>"]
    # A comma more than 20 tokens back does not move anything.
    prompt = " ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 40)
    assert [len(chunk.ids) for chunk in tokenize_prompt(tokenizer, prompt)] == [75, 16]


def test_weights_follow_their_tokens_across_the_backtrack(sd1):
    _, bundle = sd1
    prompt = " ".join(["cat"] * 70) + ", (dog:1.5) " + " ".join(["dog"] * 9)
    first, second = tokenize_prompt(bundle.tokenizers[0], prompt)
    assert set(first.weights) == {1.0}
    assert second.weights == (1.5,) + (1.0,) * 9


def test_long_prompt_is_split_into_chunks(sd1):
    _, bundle = sd1
    tokenizer, encoder = bundle.tokenizers[0], bundle.text_encoders[0]
    ids = tokenizer(LONG_PROMPT, add_special_tokens=False, verbose=False).input_ids
    cond = encode_prompt(bundle, LONG_PROMPT)
    k = cond.embeds.shape[1] // 77
    assert cond.embeds.shape == (1, 77 * k, 32) and k >= 3
    assert k == -(-len(ids) // CHUNK_TOKENS)
    for index in (0, 1):
        window = [tokenizer.bos_token_id, *ids[75 * index : 75 * (index + 1)], tokenizer.eos_token_id]
        expected = encode_ids(encoder, torch.tensor([window]))
        assert torch.equal(cond.embeds[:, 77 * index : 77 * (index + 1)], expected)


def test_long_prompt_first_chunk_equals_its_first_75_tokens_sdxl(sdxl):
    pipe, bundle = sdxl
    tokenizer = bundle.tokenizers[0]
    ids = tokenizer(LONG_PROMPT, add_special_tokens=False, verbose=False).input_ids
    first_75 = tokenizer.decode(ids[:75])
    cond = encode_prompt(bundle, LONG_PROMPT)
    alone = encode_prompt(bundle, first_75)
    assert cond.embeds.shape[1] >= 3 * 77
    assert torch.equal(cond.embeds[:, :77], alone.embeds)
    assert torch.equal(cond.pooled, alone.pooled)  # pooled from the first chunk


def test_break_starts_a_new_chunk(sd1):
    _, bundle = sd1
    cond = encode_prompt(bundle, "a cat BREAK a dog")
    assert cond.embeds.shape == (1, 154, 32)
    assert torch.equal(cond.embeds[:, :77], encode_prompt(bundle, "a cat").embeds)
    assert torch.equal(cond.embeds[:, 77:], encode_prompt(bundle, "a dog").embeds)
    # As in A1111: a leading BREAK gives an empty first chunk, a trailing one nothing.
    tokenizer = bundle.tokenizers[0]
    assert tokenize_prompt(tokenizer, "BREAK a cat")[0] == TokenChunk()
    assert len(tokenize_prompt(tokenizer, "a cat BREAK")) == 1


# --- emphasis -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["sd1", "sdxl"])
def test_emphasis_weighs_the_token_and_keeps_the_mean(request, fixture):
    _, bundle = request.getfixturevalue(fixture)
    plain = encode_prompt(bundle, "a cat on a mat").embeds
    weighted = encode_prompt(bundle, "a (cat:1.5) on a mat").embeds
    change = (weighted - plain).abs().amax(dim=-1)[0]  # per position
    cat_position = 2  # BOS, "a", "cat"
    others = torch.cat([change[:cat_position], change[cat_position + 1 :]])
    assert change[cat_position] > 3 * others.max()
    assert abs(weighted.mean().item() - plain.mean().item()) <= 1e-6


def test_emphasis_rescale_on_sd1_with_a_trained_looking_layer_norm(sd1):
    # The tiny encoder's final LayerNorm still has its initial affine (bias 0),
    # so its output's mean is ~0 and the rescale is skipped; real CLIP's is not.
    _, bundle = sd1
    encoder = copy.deepcopy(bundle.text_encoders[0])
    with torch.no_grad():
        encoder.final_layer_norm.bias.add_(torch.linspace(-0.5, 1.0, 32))
    shifted = TextEncoderBundle(family="sd1", name="t", tokenizers=bundle.tokenizers, text_encoders=(encoder,))
    plain = encode_prompt(shifted, "a cat on a mat").embeds
    weighted = encode_prompt(shifted, "a (cat:1.5) on a mat").embeds
    assert abs(weighted.mean().item() - plain.mean().item()) <= 1e-6
    ratio = (weighted / plain)[0, :, 0]
    scale = ratio[0].item()  # every unweighted token is scaled by the same factor
    assert scale != pytest.approx(1.0, abs=1e-3)
    assert ratio[2].item() == pytest.approx(1.5 * scale, rel=1e-4)
    assert torch.allclose(ratio[3:], torch.full_like(ratio[3:], scale), rtol=1e-4)


def test_apply_emphasis_keeps_the_mean_and_the_ratio():
    torch.manual_seed(0)
    hidden = torch.randn(1, 77, 8) + 0.5
    weights = torch.ones(77)
    weights[3] = 2.0
    out = apply_emphasis(hidden, weights)
    assert out.mean().item() == pytest.approx(hidden.mean().item(), rel=1e-5)
    ratio = out / hidden
    assert torch.allclose(ratio[0, 3], 2.0 * ratio[0, 0, 0], rtol=1e-5)
    assert apply_emphasis(hidden, torch.ones(77)) is hidden


def test_apply_emphasis_skips_the_rescale_of_a_zero_mean_chunk():
    hidden = torch.nn.functional.layer_norm(torch.randn(1, 77, 8), (8,))  # every row has mean 0
    weights = torch.ones(77)
    weights[1] = 1.5
    out = apply_emphasis(hidden, weights)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 1], 1.5 * hidden[0, 1])
    assert torch.equal(out[0, 2:], hidden[0, 2:])


def test_emphasis_of_one_equals_plain(sd1):
    _, bundle = sd1
    assert torch.equal(
        encode_prompt(bundle, "a (cat:1.0) on a mat").embeds, encode_prompt(bundle, "a cat on a mat").embeds
    )


def test_escaped_brackets_are_text(sd1):
    pipe, bundle = sd1
    expected, _ = pipe.encode_prompt("a (cat) on a mat", DEVICE, 1, False)
    assert torch.equal(encode_prompt(bundle, "a \\(cat\\) on a mat").embeds, expected)


def test_emphasis_in_a_later_chunk_keeps_the_first(sd1):
    _, bundle = sd1
    plain = encode_prompt(bundle, "a cat BREAK a dog").embeds
    weighted = encode_prompt(bundle, "a cat BREAK a (dog:1.4)").embeds
    assert torch.equal(plain[:, :77], weighted[:, :77])
    assert not torch.equal(plain[:, 77:], weighted[:, 77:])


# --- empty prompt, empty_chunk, dtype and errors ---------------------------------


@pytest.mark.parametrize("fixture", ["sd1", "sdxl"])
@pytest.mark.parametrize("clip_skip", [1, 2])
def test_empty_chunk_is_the_empty_prompt(request, fixture, clip_skip):
    _, bundle = request.getfixturevalue(fixture)
    empty = encode_prompt(bundle, "", clip_skip=clip_skip)
    assert empty.embeds.shape[1] == 77
    assert torch.equal(empty.embeds, empty.empty_chunk)
    cond = encode_prompt(bundle, LONG_PROMPT, clip_skip=clip_skip)
    assert torch.equal(cond.empty_chunk, empty.embeds)


def test_output_dtype_and_device_follow_the_encoder(sd1):
    _, bundle = sd1
    encoder = copy.deepcopy(bundle.text_encoders[0]).to(torch.bfloat16)
    half = TextEncoderBundle(family="sd1", name="bf16", tokenizers=bundle.tokenizers, text_encoders=(encoder,))
    cond = encode_prompt(half, "a (cat:1.3)")
    assert cond.embeds.dtype == cond.empty_chunk.dtype == torch.bfloat16
    assert cond.embeds.device == DEVICE
    assert not cond.embeds.requires_grad


def test_patches_are_accepted_and_logged(sd1, caplog):
    _, bundle = sd1
    patched = TextEncoderBundle(
        family="sd1", name="tiny", tokenizers=bundle.tokenizers, text_encoders=bundle.text_encoders, patches=("p",)
    )
    with caplog.at_level(logging.WARNING):
        cond = encode_prompt(patched, "a cat")
    assert torch.equal(cond.embeds, encode_prompt(bundle, "a cat").embeds)
    assert "patch" in caplog.text


@pytest.mark.parametrize("clip_skip", [0, 6, True, 1.5])
def test_bad_clip_skip_is_a_value_error(sd1, clip_skip):
    _, bundle = sd1
    with pytest.raises(ValueError, match="clip_skip"):
        encode_prompt(bundle, "a cat", clip_skip=clip_skip)


def test_highest_clip_skip_works(sdxl):
    _, bundle = sdxl
    assert encode_prompt(bundle, "a cat", clip_skip=5).embeds.shape == (1, 77, 64)


def test_wrong_encoder_count_is_a_value_error(sd1):
    _, bundle = sd1
    wrong = TextEncoderBundle(
        family="sdxl", name="x", tokenizers=bundle.tokenizers, text_encoders=bundle.text_encoders
    )
    with pytest.raises(ValueError, match="text_encoder"):
        encode_prompt(wrong, "a cat")


def test_non_string_text_is_a_value_error(sd1):
    _, bundle = sd1
    with pytest.raises(ValueError, match="text"):
        encode_prompt(bundle, None)
