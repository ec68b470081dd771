"""What text encoding remembers between prompts stays exactly what it would compute afresh.

The empty prompt's chunk is encoded once per bundle, clip skip, device and
dtype, and the comma id once per tokenizer (nodes/engine/text_encoding.py).
These tests interleave bundles that share the same encoder modules (a plain
one, one with a LoRA on the text encoder) and prompts with embeddings, and
compare every `empty_chunk` bit for bit with an encoding made without the
memo.
"""
from __future__ import annotations

import pytest
import torch

from diffusers_studio.nodes.engine import lora as lora_mod
from diffusers_studio.nodes.engine import text_encoding as te_mod
from diffusers_studio.nodes.engine.components import ModelBundle, TextEncoderBundle
from diffusers_studio.nodes.engine.embeddings import library_from_files, load_embedding
from diffusers_studio.nodes.engine.text_encoding import encode_prompt, tokenize_prompt
from tiny_models import clip_tokenizer, sd1_pipeline, sdxl_pipeline

TE_LAYERS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.fc1")


def _te_lora(encoder, seed: int) -> dict:
    """A kohya-format LoRA on the SD1 text encoder only (lora_te_*)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in encoder.named_modules():
        if name.endswith(TE_LAYERS):
            key = "lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_")
            sd[key + ".lora_down.weight"] = torch.randn(4, module.weight.shape[1], generator=gen) * 0.3
            sd[key + ".lora_up.weight"] = torch.randn(module.weight.shape[0], 4, generator=gen) * 0.3
            sd[key + ".alpha"] = torch.tensor(4.0)
    return sd


def _fresh_empty(bundle: TextEncoderBundle, clip_skip: int = 1) -> torch.Tensor:
    """The empty chunk encoded now, with the bundle's patches, bypassing the memo."""
    devices = [te_mod.encoder_device(e) for e in bundle.text_encoders]
    empty_row = tuple(te_mod.TokenChunk() for _ in bundle.tokenizers)
    with torch.no_grad(), te_mod.patches_applied(bundle):
        empty, _ = te_mod._encode_chunk(bundle, empty_row, clip_skip, devices)
    return empty


@pytest.fixture(scope="module")
def sd1():
    pipe = sd1_pipeline(0)
    base = TextEncoderBundle("sd1", "tiny", (pipe.tokenizer,), (pipe.text_encoder,))
    model = ModelBundle("sd1", "tiny", pipe.unet, dict(pipe.scheduler.config), torch.float32)
    loaded = lora_mod.lora_from_state_dict(_te_lora(pipe.text_encoder, 5), "te.safetensors")
    _, with_lora = lora_mod.apply_lora(model, base, loaded, 1.0, 1.0)
    return base, with_lora


def test_empty_chunk_is_exact_across_bundles_with_and_without_a_text_encoder_lora(sd1):
    base, with_lora = sd1
    base_empty, lora_empty = _fresh_empty(base), _fresh_empty(with_lora)
    assert not torch.equal(base_empty, lora_empty)  # the LoRA does change the empty prompt
    for bundle, expected in [(base, base_empty), (with_lora, lora_empty), (base, base_empty),
                             (with_lora, lora_empty), (base, base_empty)]:
        for prompt in ("a cat", "", "a dog, (red:1.2)"):
            assert torch.equal(encode_prompt(bundle, prompt).empty_chunk, expected), (bundle.patches, prompt)


def test_empty_chunk_memo_keys_on_clip_skip(sd1):
    base, _ = sd1
    skip_two = encode_prompt(base, "a cat", clip_skip=2).empty_chunk
    assert torch.equal(skip_two, _fresh_empty(base, clip_skip=2))
    assert not torch.equal(skip_two, encode_prompt(base, "a cat").empty_chunk)


def test_empty_chunk_memo_is_not_shared_with_callers(sd1):
    base, _ = sd1
    first = encode_prompt(base, "a cat").empty_chunk
    first.add_(1.0)  # a caller that (wrongly) writes into its conditioning
    assert torch.equal(encode_prompt(base, "a cat").empty_chunk, _fresh_empty(base))


def test_a_new_bundle_over_the_same_encoders_starts_afresh(sd1):
    base, _ = sd1
    encode_prompt(base, "a cat")
    twin = TextEncoderBundle("sd1", "tiny", base.tokenizers, base.text_encoders)
    assert "_ds_empty_chunks" not in twin.__dict__
    assert torch.equal(encode_prompt(twin, "a cat").empty_chunk, _fresh_empty(base))


def test_embeddings_leave_the_empty_chunk_alone(sd1, tmp_path):
    from safetensors.torch import save_file

    base, with_lora = sd1
    path = tmp_path / "shiny.safetensors"
    save_file({"emb_params": torch.randn(3, 32, generator=torch.Generator().manual_seed(2))}, str(path))
    library = library_from_files({"shiny.safetensors": str(path)}, load_embedding)
    for bundle in (base, with_lora):
        cond = encode_prompt(bundle, "a shiny cat", embeddings=library)
        assert not torch.equal(cond.embeds, encode_prompt(bundle, "a cat").embeds)
        assert torch.equal(cond.empty_chunk, _fresh_empty(bundle))


def test_sdxl_empty_chunk_and_pooled_stay_exact():
    pipe = sdxl_pipeline(0)
    bundle = TextEncoderBundle("sdxl", "tiny", (pipe.tokenizer, pipe.tokenizer_2),
                               (pipe.text_encoder, pipe.text_encoder_2))
    expected = _fresh_empty(bundle)
    for prompt in ("a cat", "", "a cat"):
        assert torch.equal(encode_prompt(bundle, prompt).empty_chunk, expected)


def test_comma_id_is_looked_up_once_per_tokenizer():
    tokenizer = clip_tokenizer()
    calls = []
    real = tokenizer.get_vocab

    def counting():
        calls.append(1)
        return real()

    tokenizer.get_vocab = counting
    long = ", ".join(["a red cat"] * 30)  # commas and more than one chunk: the backtrack runs
    chunks = tokenize_prompt(tokenizer, long)
    assert len(chunks) > 1 and tokenize_prompt(tokenizer, long) == chunks
    tokenize_prompt(tokenizer, "a dog")
    assert len(calls) == 1
    other = clip_tokenizer()
    assert tokenize_prompt(other, long) == chunks  # another tokenizer: its own lookup, same result
