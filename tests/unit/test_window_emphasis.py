"""A1111 emphasis on SD3 and Flux: per token inside one window, the mean kept.

What emphasis means, checked on the encoders' real outputs: against the
unweighted prompt with the same tokens, every row of the weighted window is
the unweighted row times one common factor c (the mean rescale), and the
emphasised tokens' rows are times weight x c. Pooled prompts are never
weighted. A prompt whose weights are all 1.0 is the plain prompt bit for bit.
"""
from __future__ import annotations

import pytest
import torch

import tiny_dit
import tiny_models
from diffusers_studio.nodes.engine.loading import load_checkpoint
from diffusers_studio.nodes.engine.text_encoding import encode_prompt
from diffusers_studio.nodes.engine.window_prompt import weighted_window, window_ids, window_prompt


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-emphasis")
    tiny_dit.sd3_pipeline(0).save_pretrained(str(root / "sd3"), safe_serialization=True)
    tiny_dit.flux_pipeline(0, dev=True).save_pretrained(str(root / "flux-dev"), safe_serialization=True)
    return root


def _load(folders, name):
    return load_checkpoint(folders / name, dtype="float32", tokenizer_dir=tiny_models.tokenizer_dir())


def _factors(weighted: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """Per row, weighted / plain (a least-squares scale over the features)."""
    w, p = weighted[0].double(), plain[0].double()
    return (w * p).sum(-1) / (p * p).sum(-1)


def _check_window(weighted, plain, heavy_rows, weight):
    factors = _factors(weighted, plain)
    light = torch.ones(factors.shape[0], dtype=torch.bool)
    light[heavy_rows] = False
    c = factors[light].mean()
    assert torch.allclose(factors[light], c.expand(int(light.sum())), atol=1e-5)
    assert torch.allclose(factors[heavy_rows], (weight * c).expand(len(heavy_rows)), atol=1e-5)
    assert abs(float(weighted.double().mean() - plain.double().mean())) <= 1e-6 * float(plain.abs().mean())
    # Each row is exactly its factor times the plain row (the emphasis moves nothing else).
    assert torch.allclose(weighted[0].double(), factors[:, None] * plain[0].double(), atol=1e-5)


def test_weighted_window_layouts():
    """CLIP: BOS + tokens + EOS + pad; T5: tokens + EOS + pad; special and pad rows weigh 1.0."""
    clip, t5 = tiny_models.clip_tokenizer(), tiny_dit.t5_tokenizer()
    prompt = window_prompt("a (red:1.5) car", "Flux")
    for tokenizer, offset in ((clip, 1), (t5, 0)):
        ids, weights = weighted_window(tokenizer, prompt.runs, 16, "X")
        plain = window_ids(tokenizer, "a red car", 16, "X")
        assert torch.equal(ids, plain)  # run-by-run tokenizing gives the whole text's ids here
        red = tokenizer("red", add_special_tokens=False)["input_ids"]
        expected = torch.ones(16)
        expected[offset + len(tokenizer("a", add_special_tokens=False)["input_ids"]):][: len(red)] = 1.5
        assert torch.equal(weights, expected)


def test_flux_t5_rows_are_weighted_and_the_pooled_prompt_is_not(folders):
    _, text, _ = _load(folders, "flux-dev")
    plain, weighted = encode_prompt(text, "a red car"), encode_prompt(text, "a (red:1.5) car")
    t5 = tiny_dit.t5_tokenizer()
    start = len(t5("a", add_special_tokens=False)["input_ids"])
    rows = list(range(start, start + len(t5("red", add_special_tokens=False)["input_ids"])))
    _check_window(weighted.embeds, plain.embeds, rows, 1.5)
    assert torch.equal(weighted.pooled, plain.pooled)
    assert not torch.equal(weighted.embeds, plain.embeds)


def test_sd3_clip_and_t5_parts_are_each_weighted(folders):
    _, text, _ = _load(folders, "sd3")
    plain, weighted = encode_prompt(text, "a red car"), encode_prompt(text, "a (red:0.6) car")
    clip_tok, t5 = tiny_models.clip_tokenizer(), tiny_dit.t5_tokenizer()
    clip_start = 1 + len(clip_tok("a", add_special_tokens=False)["input_ids"])
    t5_start = len(t5("a", add_special_tokens=False)["input_ids"])
    # [CLIP-L | CLIP-G] (77 rows, zero-padded to T5's width) then T5: each encoder is rescaled on its own,
    # so the CLIP features of L and G are checked apart.
    width_l = int(text.text_encoders[0].config.hidden_size)
    width_g = int(text.text_encoders[1].config.hidden_size)
    clip_rows = [clip_start]
    for lo, hi in ((0, width_l), (width_l, width_l + width_g)):
        _check_window(weighted.embeds[:, :77, lo:hi], plain.embeds[:, :77, lo:hi], clip_rows, 0.6)
    _check_window(weighted.embeds[:, 77:], plain.embeds[:, 77:], [t5_start], 0.6)
    assert torch.equal(weighted.pooled, plain.pooled)  # SD3's pooled: the same tokens, never weighted


@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_weights_of_one_are_the_plain_prompt(folders, name):
    _, text, _ = _load(folders, name)
    assert torch.equal(encode_prompt(text, "a (red:1.0) car").embeds, encode_prompt(text, "a red car").embeds)
