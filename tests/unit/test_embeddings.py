"""Textual-inversion embeddings: file formats, prompt syntax, parity with diffusers' load_textual_inversion."""
from __future__ import annotations

import copy
import os

import pytest
import torch
from safetensors.torch import save_file

from diffusers_studio.nodes.engine.components import TextEncoderBundle
from diffusers_studio.nodes.engine.embeddings import library_from_files, load_embedding
from diffusers_studio.nodes.engine.text_encoding import encode_prompt
from tiny_models import sd1_pipeline, sdxl_pipeline

TOL = 1e-4


@pytest.fixture(scope="module")
def sd1():
    pipe = sd1_pipeline()
    return pipe, TextEncoderBundle("sd1", "tiny", (pipe.tokenizer,), (pipe.text_encoder,))


def _vectors(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def files(tmp_path):
    a1111 = tmp_path / "tinyneg.pt"
    torch.save({"string_to_param": {"*": _vectors(2, 32, 1)}, "name": "tinyneg", "step": 1500,
                "sd_checkpoint": "abcd1234", "sd_checkpoint_name": "v1-5"}, a1111)
    safe = tmp_path / "sub" / "shiny.safetensors"
    safe.parent.mkdir()
    save_file({"emb_params": _vectors(3, 32, 2)}, str(safe))
    xl = tmp_path / "xlstyle.safetensors"
    save_file({"clip_l": _vectors(2, 32, 3), "clip_g": _vectors(2, 32, 4)}, str(xl))
    listed = {"tinyneg.pt": str(a1111), "sub/shiny.safetensors": str(safe), "xlstyle.safetensors": str(xl)}
    return listed, library_from_files(listed, load_embedding)


def test_formats_and_a1111_fields(files):
    listed, _ = files
    a1111 = load_embedding(listed["tinyneg.pt"])
    assert (a1111.name, a1111.count, a1111.shape, a1111.step, a1111.sd_checkpoint_name) == (
        "tinyneg", 2, 32, 1500, "v1-5")
    assert load_embedding(listed["sub/shiny.safetensors"]).count == 3
    xl = load_embedding(listed["xlstyle.safetensors"])
    assert set(xl.vectors) == {"clip_l", "clip_g"} and xl.shape == 64


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "hook": os.getcwd}, path)
    with pytest.raises(ValueError, match="carries code, which the pack never runs"):
        load_embedding(str(path))


def _diffusers_reference(pipe, prompt: str, state: dict, token: str) -> torch.Tensor:
    """diffusers' load_textual_inversion on copies of the tokenizer and encoder, then its encoding."""
    tokenizer, encoder = copy.deepcopy(pipe.tokenizer), copy.deepcopy(pipe.text_encoder)
    pipe.load_textual_inversion(state, token=token, tokenizer=tokenizer, text_encoder=encoder)
    text = pipe.maybe_convert_prompt(prompt, tokenizer)
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0]


@pytest.mark.parametrize("spelling", ["a tinyneg cat", "a embedding:tinyneg cat", "a embedding:tinyneg.pt cat",
                                      "a TinyNeg cat"])
def test_sd1_matches_diffusers_load_textual_inversion(sd1, files, spelling):
    pipe, te = sd1
    listed, library = files
    state = torch.load(listed["tinyneg.pt"], weights_only=True)
    ref = _diffusers_reference(pipe, "a tinyneg cat", state, "tinyneg")
    ours = encode_prompt(te, spelling, embeddings=library).embeds
    assert (ours - ref).abs().max().item() <= TOL
    plain = encode_prompt(te, "a cat", embeddings=library).embeds
    assert torch.equal(plain, encode_prompt(te, "a cat").embeds)  # no embedding named: unchanged
    assert (ours - plain).abs().max().item() > 100 * TOL


def test_emphasis_and_unknown_names(sd1, files):
    _, te = sd1
    _, library = files
    weighted = encode_prompt(te, "a (shiny:1.3) cat", embeddings=library).embeds
    assert not torch.equal(weighted, encode_prompt(te, "a shiny cat", embeddings=library).embeds)
    with pytest.raises(ValueError, match="embedding:missing is not in"):
        encode_prompt(te, "embedding:missing", embeddings=library)


def test_sdxl_takes_clip_l_and_clip_g(files):
    pipe = sdxl_pipeline()
    te = TextEncoderBundle("sdxl", "tiny-xl", (pipe.tokenizer, pipe.tokenizer_2),
                           (pipe.text_encoder, pipe.text_encoder_2))
    listed, library = files
    xl = load_embedding(listed["xlstyle.safetensors"])
    ours = encode_prompt(te, "xlstyle", embeddings=library).embeds
    refs = []
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        tok, enc = copy.deepcopy(tokenizer), copy.deepcopy(encoder)
        pipe.load_textual_inversion(xl.vectors[key], token="xlstyle", tokenizer=tok, text_encoder=enc)
        ids = tok(pipe.maybe_convert_prompt("xlstyle", tok), padding="max_length", max_length=77,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            refs.append(enc(ids, output_hidden_states=True).hidden_states[-2])
    assert (ours - torch.cat(refs, dim=-1)).abs().max().item() <= TOL
