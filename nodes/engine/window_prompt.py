"""A prompt in ONE fixed token window (SD3's CLIP and T5, Flux's T5), with A1111 emphasis.

SD1/SDXL cut long prompts into 75-token chunks (text_encoding.py). The flow
pipelines cannot: T5 reads one sequence of `max_sequence_length` tokens and
the transformers attend over it as a whole, so chunking has no meaning and
BREAK is removed (with a warning). Emphasis does have one, per token, in any
window: `(word:1.3)` multiplies that token's output row by 1.3 and the whole
window is then rescaled to its unweighted mean, the rule SD1 uses (A1111's
"Original" emphasis; Forge applies the same rule to Flux's T5).

A prompt without weights takes diffusers' exact path: the tokenizer on the
whole text, so the plain pipelines' parity holds bit for bit. A weighted one
is tokenized run by run (each bracketed run on its own, as A1111 does) with
the tokenizer's own special tokens (CLIP: BOS ... EOS, T5: ... EOS) and
padding, cut to the window with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .prompt_weights import parse_prompt_chunks

logger = logging.getLogger(__name__)

Run = Tuple[str, float]


@dataclass(frozen=True)
class WindowPrompt:
    """A prompt read for window encoders: its plain text, and its weighted runs when it has weights."""

    plain: str
    runs: Optional[Tuple[Run, ...]] = None  # None: no weight differs from 1.0

    @property
    def weighted(self) -> bool:
        return self.runs is not None


def window_prompt(text: str, label: str) -> WindowPrompt:
    """Parse A1111 syntax once; BREAK is removed with a warning (a window has no chunks)."""
    chunks = parse_prompt_chunks(text)
    runs = [run for chunk in chunks for run in chunk]
    weighted = any(weight != 1.0 for _, weight in runs)
    if len(chunks) == 1:  # the text without its syntax ("(red:1.0)" reads "red"), spaces kept as typed
        plain = "".join(run for run, _ in chunks[0])
    else:
        plain = " ".join("".join(run for run, _ in chunk).strip() for chunk in chunks)
    if len(chunks) > 1:
        logger.warning(
            "%s prompts are one token window: BREAK is removed (the words stay); encoding %r", label, plain
        )
    if not weighted:
        return WindowPrompt(plain)
    joined: List[Run] = []
    for index, chunk in enumerate(chunks):
        if index:
            joined.append((" ", 1.0))
        joined.extend(chunk)
    return WindowPrompt(plain, tuple(joined))


def window_ids(tokenizer, text: str, length: int, what: str) -> torch.Tensor:
    """[1, length] ids padded to `length` and cut there (diffusers' encode_prompt), with a warning when cut."""
    ids = tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    full = tokenizer(text, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > ids.shape[-1] or (full.shape[-1] == ids.shape[-1] and not torch.equal(full, ids)):
        logger.warning("The prompt is longer than %s's %s tokens; the rest is cut off", what, length)
    return ids


def special_frame(tokenizer) -> Tuple[List[int], List[int]]:
    """The special tokens the tokenizer puts before and after a text (CLIP: [BOS], [EOS]; T5: [], [EOS])."""
    probe = "a"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    framed = tokenizer(probe)["input_ids"]
    for start in range(len(framed) - len(bare) + 1):
        if framed[start:start + len(bare)] == bare:
            return list(framed[:start]), list(framed[start + len(bare):])
    raise ValueError(f"{type(tokenizer).__name__}: cannot tell its special tokens apart from the text {probe!r}")


def weighted_window(tokenizer, runs, length: int, what: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """([1, length] ids, [length] float32 weights) of weighted runs; special and pad tokens weigh 1.0."""
    ids: List[int] = []
    weights: List[float] = []
    for run, weight in runs:
        if not run.strip():
            continue
        piece = tokenizer(run, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        ids.extend(piece)
        weights.extend([float(weight)] * len(piece))
    prefix, suffix = special_frame(tokenizer)
    room = length - len(prefix) - len(suffix)
    if len(ids) > room:
        logger.warning("The prompt is longer than %s's %s tokens; the rest is cut off", what, length)
        ids, weights = ids[:room], weights[:room]
    offset = len(prefix)
    full = prefix + ids + suffix
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    window = full + [pad] * (length - len(full))
    row = [1.0] * length
    row[offset:offset + len(weights)] = weights
    return torch.tensor([window], dtype=torch.long), torch.tensor(row, dtype=torch.float32)


def prompt_ids(tokenizer, prompt: WindowPrompt, length: int, what: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The window's ids and its weights (None for an unweighted prompt: diffusers' ids exactly)."""
    if not prompt.weighted:
        return window_ids(tokenizer, prompt.plain, length, what), None
    return weighted_window(tokenizer, prompt.runs, length, what)


__all__ = ["WindowPrompt", "prompt_ids", "special_frame", "weighted_window", "window_ids", "window_prompt"]
