"""Prompt text to Conditioning: A1111-style chunks and emphasis on CLIP.

CLIP sees 77 tokens at a time (BOS + 75 + EOS). Like the A1111 web UI, a longer
prompt is cut into chunks of 75 tokens, each wrapped and encoded on its own, and
the chunk encodings are concatenated along the sequence ([1, 77*k, D]); the
UNet's cross-attention takes any sequence length. For a prompt that fits in one
chunk and has no emphasis the result is bit-identical to diffusers'
`encode_prompt`, so the sampler can reproduce the diffusers pipelines exactly.

Decisions, each A1111's unless said otherwise:

- Emphasis: each prompt token's embedding is multiplied by its weight, then the
  chunk is rescaled so that its mean equals the unweighted chunk's mean
  (A1111's "Original" emphasis). It is done per chunk and per text encoder,
  which also keeps the mean of the whole tensor. A chunk whose weights are all
  1.0 is left untouched (no rescale), so plain prompts stay bit-identical.
  Our addition: when the weighted mean is ~0 (below 1e-5 of the mean absolute
  value, e.g. an untrained LayerNorm's output) the ratio would be rounding
  noise, so that chunk is weighted but not rescaled; A1111 divides anyway.
- Chunking: when a chunk is full and the next token is not a comma, the tokens
  after the chunk's last comma move to the next chunk if that comma is at most
  `COMMA_BACKTRACK` (20, A1111's default) tokens back; otherwise the chunk is
  cut where it is full (possibly mid-word, as in A1111). `BREAK` ends a chunk.
- Padding: each chunk is BOS + tokens + EOS + the tokenizer's own pad token,
  exactly what `tokenizer(text, padding="max_length", max_length=77)` gives.
- clip_skip counts as in A1111 (1 = last layer). SD1: 1 is the encoder's
  output, n > 1 is hidden_states[-n] through the final layer norm (diffusers'
  clip_skip = n - 1). SDXL: both encoders give hidden_states[-(n + 1)] without
  the final layer norm (1 = penultimate, as diffusers' SDXL), concatenated on
  the feature axis; pooled is the second encoder's projection (text_embeds) of
  the first chunk, unweighted. The SDXL refiner has only the second encoder
  (OpenCLIP bigG): its penultimate hidden states (1280 wide) and its
  projection, as diffusers' StableDiffusionXLImg2ImgPipeline.encode_prompt
  does with text_encoder=None.
- An empty prompt is encoded as the empty string, never replaced by zeros:
  diffusers zeroes an SDXL base negative only when none is given at all
  (force_zeros_for_empty_prompt), which a graph cannot express; the refiner's
  model_index sets force_zeros_for_empty_prompt to False, so there the two
  agree exactly.
- SDXL's two tokenizers are run separately (their pad tokens differ). Should
  they ever cut a prompt into different numbers of chunks, the shorter side is
  padded with empty chunks and a warning is logged.
"""
from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from . import families
from .components import Conditioning, TextEncoderBundle, compute_dtype
from .embeddings import Embedding, EmbeddingLibrary, vectors_in_place
from .prompt_weights import parse_prompt_chunks

logger = logging.getLogger(__name__)

CHUNK_TOKENS = 75
WINDOW_TOKENS = CHUNK_TOKENS + 2  # + BOS + EOS: CLIP's 77 positions
COMMA_BACKTRACK = 20
_DEGENERATE_MEAN = 1e-5  # |mean| below this share of mean |value| is rounding noise
PLACEHOLDER_ID = 0  # an embedding vector's slot; its token embedding is replaced (embeddings.py)


@dataclass(frozen=True)
class TokenChunk:
    """Up to 75 prompt tokens (no specials) with one weight per token.

    A token is a vocabulary id, or (Embedding, row) for one vector of a
    textual-inversion embedding.
    """

    ids: Tuple = ()
    weights: Tuple[float, ...] = ()


def _run_items(tokenizer, texts: List[str], embeddings: Optional[EmbeddingLibrary]) -> List[list]:
    """Per run: its token ids, with Embedding objects where the prompt names one."""
    if not texts:
        return []
    if embeddings is None or not embeddings.names:
        # verbose=False: a long run is expected here, no "longer than 77" warning.
        return tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    runs = []
    for text in texts:
        items: list = []
        for piece in embeddings.split(text):
            if isinstance(piece, Embedding):
                items.append(piece)
            else:
                items.extend(tokenizer(piece, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])
        runs.append(items)
    return runs


_COMMA_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _comma_id(tokenizer) -> Optional[int]:
    """The id of "," for A1111's comma backtrack, looked up once per tokenizer.

    `get_vocab()` builds a fresh dict of the whole vocabulary (49,408 entries
    for CLIP): done per prompt it was a tenth of a text encoding's time on a
    CPU. The base vocabulary never changes for a tokenizer (embeddings take
    placeholder ids, not added tokens), so the id is kept as long as the
    tokenizer lives.
    """
    try:
        return _COMMA_IDS[tokenizer]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable or not hashable: no cache
        return tokenizer.get_vocab().get(",</w>")
    comma_id = _COMMA_IDS[tokenizer] = tokenizer.get_vocab().get(",</w>")
    return comma_id


def tokenize_prompt(tokenizer, text: str, embeddings: Optional[EmbeddingLibrary] = None) -> List[TokenChunk]:
    """Cut a prompt into 75-token chunks carrying per-token emphasis weights.

    Each weighted run is tokenized on its own without special tokens (A1111
    does the same; run boundaries fall on bracket edges, which are word edges
    in practice). Always returns at least one chunk; an empty prompt is one
    empty chunk.
    """
    comma_id = _comma_id(tokenizer)
    chunks: List[TokenChunk] = []
    ids: List[int] = []
    weights: List[float] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal ids, weights, last_comma
        chunks.append(TokenChunk(tuple(ids), tuple(weights)))
        ids, weights, last_comma = [], [], -1

    for forced_index, runs in enumerate(parse_prompt_chunks(text)):
        if forced_index:  # a BREAK
            close_chunk()
        texts = [run_text for run_text, _ in runs]
        for run_ids, (_, weight) in zip(_run_items(tokenizer, texts, embeddings), runs):
            for token in run_ids:
                if isinstance(token, Embedding):
                    # A1111: an embedding that does not fit moves whole to the next chunk.
                    if ids and len(ids) + token.count > CHUNK_TOKENS:
                        close_chunk()
                    for row in range(token.count):
                        if len(ids) == CHUNK_TOKENS:
                            close_chunk()
                        ids.append((token, row))
                        weights.append(float(weight))
                    continue
                if token == comma_id:
                    last_comma = len(ids)
                elif (
                    len(ids) == CHUNK_TOKENS
                    and last_comma != -1
                    and len(ids) - last_comma <= COMMA_BACKTRACK
                ):
                    # Move the words after the last comma to the next chunk.
                    keep = last_comma + 1
                    moved_ids, moved_weights = ids[keep:], weights[keep:]
                    ids, weights = ids[:keep], weights[:keep]
                    close_chunk()
                    ids, weights = moved_ids, moved_weights
                if len(ids) == CHUNK_TOKENS:
                    close_chunk()
                ids.append(token)
                weights.append(float(weight))
    if ids or not chunks:
        close_chunk()
    return chunks


def chunk_input_ids(tokenizer, chunk: TokenChunk) -> torch.Tensor:
    """[1, 77] ids: BOS + tokens + EOS + padding with the tokenizer's pad id."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = [bos, *(PLACEHOLDER_ID if isinstance(t, tuple) else t for t in chunk.ids), eos]
    ids += [pad] * (WINDOW_TOKENS - len(ids))
    return torch.tensor([ids], dtype=torch.long)


def chunk_placements(chunk: TokenChunk) -> list:
    """[(window position, Embedding, row)] for the chunk's embedding vectors."""
    return [(i + 1, t[0], t[1]) for i, t in enumerate(chunk.ids) if isinstance(t, tuple)]


def chunk_weights(chunk: TokenChunk) -> torch.Tensor:
    """[77] float32 weights aligned with `chunk_input_ids` (specials are 1.0)."""
    weights = [1.0, *chunk.weights, 1.0]
    weights += [1.0] * (WINDOW_TOKENS - len(weights))
    return torch.tensor(weights, dtype=torch.float32)


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's embedding by its weight, keeping the chunk's mean.

    Without the rescale a heavy weight would also shift the whole chunk's
    magnitude, which the UNet reads as a different prompt; A1111 restores the
    original mean so that emphasis only moves attention between tokens. The
    arithmetic is done in float32 so half-precision encoders lose nothing.
    """
    if bool((weights == 1.0).all()):
        return hidden
    values = hidden.float()
    original_mean = values.mean()
    values = values * weights.to(values.device).reshape(1, -1, 1)
    new_mean = values.mean()
    # A mean that is zero up to float rounding (a LayerNorm output with its
    # initial affine, for instance) would make the ratio pure noise; A1111
    # divides anyway, we leave such a chunk unrescaled (its mean is ~0 both ways).
    if torch.isfinite(new_mean) and new_mean.abs() > _DEGENERATE_MEAN * values.abs().mean():
        values = values * (original_mean / new_mean)
    else:
        logger.debug("Prompt emphasis: chunk mean %s is ~0; not rescaled", new_mean.item())
    return values.to(hidden.dtype)


def encoder_device(encoder) -> torch.device:
    """Where the encoder's inputs must go (its offload hook's device if any)."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:  # older diffusers: the weights' device
        return next(encoder.parameters()).device
    return get_module_execution_device(encoder)


@contextlib.contextmanager
def patches_applied(bundle: TextEncoderBundle) -> Iterator[None]:
    """Apply the bundle's patches (e.g. LoRA on the text encoders) for one encode.

    The place where text-encoder patches take effect and are undone afterwards,
    so that the cached encoders are never left modified. A patch takes part by
    having `text_encoder_patch(bundle)`, a context manager that applies it and
    restores everything on exit (LoRA: engine/lora.py); they are entered in
    attachment order and left in reverse, even on error. Other patches are
    logged and ignored.
    """
    with contextlib.ExitStack() as stack:
        for patch in bundle.patches:
            enter = getattr(patch, "text_encoder_patch", None)
            if enter is None:
                logger.warning(
                    "Text encoder %r carries a patch that text encoding does not apply: %r", bundle.name, patch
                )
                continue
            stack.enter_context(enter(bundle))
        yield


def _encode_chunk(
    bundle: TextEncoderBundle, chunks: Sequence[TokenChunk], clip_skip: int, devices: Sequence[torch.device]
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Encode the same chunk index with every encoder; concatenate features.

    `devices`: each encoder's `encoder_device`, found once per prompt (it
    walks the encoder's modules for offload hooks).
    """
    family = families.of(bundle)
    parts = []
    pooled = None
    for index, (tokenizer, encoder, chunk, device) in enumerate(
        zip(bundle.tokenizers, bundle.text_encoders, chunks, devices)
    ):
        ids = chunk_input_ids(tokenizer, chunk).to(device)
        key = family.text_encoders[index].embedding_key
        with vectors_in_place(encoder, chunk_placements(chunk), key):
            hidden, pooled = family.encoder_output(index, encoder, ids, clip_skip)
        parts.append(apply_emphasis(hidden, chunk_weights(chunk)))
    if len(parts) == 1:
        return parts[0], pooled
    return torch.cat([part.to(parts[-1].device) for part in parts], dim=-1), pooled


def _empty_encoding(bundle: TextEncoderBundle, clip_skip: int, devices: Sequence[torch.device]) -> torch.Tensor:
    """The empty prompt's chunk ([1, 77, D]), encoded once per bundle, clip skip, device and dtype.

    Every prompt carries it (the sampler pads the shorter of positive and
    negative with it), and it was encoded again for every prompt: one text
    encoder forward (SDXL: two) per DSTextEncode. It depends only on what
    the key and the bundle fix: the encoders (a bundle's are fixed), the
    bundle's patches (fixed too: a LoRA on the text encoder makes a new
    bundle, and its encoding is cached on that bundle, computed with the
    LoRA applied, since this runs inside `patches_applied`), clip skip, and
    where the encoders are. Embeddings take no part (the chunk has no
    tokens). The memo lives on the bundle and dies with it; callers get a
    copy, so no conditioning shares its tensor with another.
    """
    key = (clip_skip, tuple(devices), tuple(encoder.dtype for encoder in bundle.text_encoders))
    memo = bundle.__dict__.get("_ds_empty_chunks")
    if memo is None:
        memo = {}
        object.__setattr__(bundle, "_ds_empty_chunks", memo)  # a memo, not a field: replace() starts afresh
    empty = memo.get(key)
    if empty is None:
        empty, _ = _encode_chunk(bundle, tuple(TokenChunk() for _ in bundle.tokenizers), clip_skip, devices)
        memo[key] = empty
    return empty.clone()


def _check(bundle: TextEncoderBundle, text, clip_skip) -> None:
    try:
        family = families.of(bundle)
    except ValueError as exc:
        raise ValueError(f"text_encoder: {exc}") from None
    expected = len(family.text_encoders)
    if len(bundle.text_encoders) != expected or len(bundle.tokenizers) != expected:
        raise ValueError(
            f"text_encoder: the {family.short_label} text encoder needs {expected} tokenizer/encoder "
            f"pair(s), got {len(bundle.tokenizers)} tokenizer(s) and "
            f"{len(bundle.text_encoders)} encoder(s); reload the checkpoint"
        )
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string, got {type(text).__name__}")
    layers = min(int(encoder.config.num_hidden_layers) for encoder in bundle.text_encoders)
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
        raise ValueError(
            f"clip_skip: got {clip_skip!r}; use an integer from 1 (last layer, no skip) "
            f"to {layers} (1 = last layer, 2 = penultimate, ...)"
        )


def _aligned_chunks(
    bundle: TextEncoderBundle, text: str, embeddings: Optional[EmbeddingLibrary] = None
) -> List[Tuple[TokenChunk, ...]]:
    """Per chunk index, one TokenChunk per tokenizer (padded to equal counts)."""
    per_tokenizer = [tokenize_prompt(tokenizer, text, embeddings) for tokenizer in bundle.tokenizers]
    count = max(len(chunks) for chunks in per_tokenizer)
    if any(len(chunks) != count for chunks in per_tokenizer):
        logger.warning(
            "The tokenizers of %r cut the prompt into %s chunks; padding with empty chunks",
            bundle.name,
            [len(chunks) for chunks in per_tokenizer],
        )
        per_tokenizer = [chunks + [TokenChunk()] * (count - len(chunks)) for chunks in per_tokenizer]
    return list(zip(*per_tokenizer))


def _family_encoding(bundle, text, clip_skip, embeddings, options) -> Optional[Conditioning]:
    """The family's own encoder (SD3, Flux: CLIP + T5 as their pipelines), or None for CLIP windows.

    `options` are family options (max_sequence_length); the CLIP-window
    families take none, so one given to them is refused by name.
    """
    try:
        family = families.of(bundle)
    except ValueError as exc:
        raise ValueError(f"text_encoder: {exc}") from None
    own = family.encode_prompt(bundle, text, clip_skip=clip_skip, embeddings=embeddings, **options)
    if own is None and options:
        raise ValueError(
            f"text_encoder: {', '.join(sorted(options))} applies to SD3 and Flux text encoders, not to "
            f"{family.short_label}: leave it at 0"
        )
    return own


def encode_prompt(
    text_encoder: TextEncoderBundle,
    text: str,
    *,
    clip_skip: int = 1,
    embeddings: Optional[EmbeddingLibrary] = None,
    **options,
) -> Conditioning:
    """Encode one prompt (A1111 emphasis, BREAK, any length) into Conditioning.

    Returns embeds [1, 77*k, D] for k chunks, `empty_chunk` [1, 77, D] (the
    empty prompt, for the sampler to pad the shorter of positive/negative) and,
    for SDXL, pooled [1, P] from the first chunk. Tensors stay on the (last)
    encoder's device in its dtype.
    """
    own = _family_encoding(text_encoder, text, clip_skip, embeddings, options)
    if own is not None:
        return own
    _check(text_encoder, text, clip_skip)
    chunk_rows = _aligned_chunks(text_encoder, text, embeddings)
    last_encoder = text_encoder.text_encoders[-1]
    devices = [encoder_device(encoder) for encoder in text_encoder.text_encoders]
    device, dtype = devices[-1], compute_dtype(last_encoder)
    with torch.no_grad(), patches_applied(text_encoder):
        encoded = []
        pooled = None
        for index, row in enumerate(chunk_rows):
            hidden, chunk_pooled = _encode_chunk(text_encoder, row, clip_skip, devices)
            encoded.append(hidden)
            if index == 0:
                pooled = chunk_pooled
        empty = _empty_encoding(text_encoder, clip_skip, devices)
    embeds = encoded[0] if len(encoded) == 1 else torch.cat(encoded, dim=1)
    if families.of(text_encoder).pooled:
        if pooled is None:
            raise ValueError(
                f"text_encoder: the OpenCLIP bigG encoder of {text_encoder.name!r} gives no pooled "
                "output; it must be a CLIPTextModelWithProjection"
            )
        pooled = pooled.to(device=device, dtype=dtype)
    else:
        pooled = None
    return Conditioning(
        family=text_encoder.family,
        embeds=embeds.to(device=device, dtype=dtype),
        empty_chunk=empty.to(device=device, dtype=dtype),
        pooled=pooled,
        variant=text_encoder.variant,
    )


__all__ = [
    "CHUNK_TOKENS",
    "COMMA_BACKTRACK",
    "WINDOW_TOKENS",
    "TokenChunk",
    "apply_emphasis",
    "chunk_input_ids",
    "chunk_placements",
    "chunk_weights",
    "encode_prompt",
    "encoder_device",
    "patches_applied",
    "tokenize_prompt",
]
