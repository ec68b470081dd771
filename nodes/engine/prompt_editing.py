"""Prompt editing and alternation at sampling time (A1111's `[a:b:when]`, `[a|b]`).

Which text is drawn at which step depends on the sampler's step count, which
the text encoder does not know. So a prompt with editing syntax is encoded as
a normal Conditioning of its first text (every edit before its switch), plus a
`PromptEditing` extra that remembers the prompt, the text encoder and the clip
skip. When the sampler runs, the extra's hook resolves the schedule with the
run's steps (prompt_schedule.py), encodes each distinct text once (cached on
the extra, so the next run with the same prompt encodes nothing) and, before
every UNet call, puts the texts of the current step into the CFG batch, laid
out exactly as the sampler lays out plain prompts (negative rows then
positive rows, the shorter padded with its own empty chunks; SDXL's pooled
embedding follows its text). A step drawing "cat" is therefore the very same
UNet call as a run of the plain prompt "cat". A prompt without editing syntax
gets no extra at all and stays bit-identical to before.

SD3 and Flux: each scheduled text is encoded with the prompt's own options
(max_sequence_length), so every step's rows have the plain prompt's shape and
the pooled projection (the family's `pooled_key`) follows its text.

Step counting (A1111's, read from its processing and CFG denoiser code):
- the schedule spans the sampler's `steps`, times the scheduler's order
  (Heun and DPM2 call the UNet twice a step; A1111 doubles their schedule too),
  and the step index counts UNet calls;
- image-to-image (denoise < 1) counts from 0 at the first step it runs, over a
  schedule of the full `steps` (A1111's img2img: `[a:b:0.5]` at denoise 0.5
  never reaches `b`);
- a run continued with start_step (a refiner, a split run) counts on from
  start_step, as A1111's refiner switch does within one run;
- a hires-fix pass is encoded with `first_pass_steps` (A1111's hires rule,
  see prompt_schedule.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import families, hooks
from .components import FLUX, SD3, Conditioning, TextEncoderBundle
from .embeddings import EmbeddingLibrary
from .prompt_schedule import entry_at, first_text, has_editing, prompt_schedule
from .regional import _pad_tokens
from .text_encoding import encode_prompt

logger = logging.getLogger(__name__)

ORDER = -30  # before regional prompts (-20), which widen the batch from the rows set here


@dataclass(frozen=True, eq=False)
class PromptEditing:
    """The extra on an edited prompt's Conditioning: what the sampler needs to schedule it."""

    text: str
    text_encoder: TextEncoderBundle
    clip_skip: int = 1
    first_pass_steps: int = 0  # > 0: this prompt drives a hires-fix pass after that many steps
    old_timelines: bool = False
    embeddings: Optional[EmbeddingLibrary] = field(default=None, repr=False)
    options: tuple = ()  # the family's encode options as (name, value) pairs (SD3/Flux: max_sequence_length)
    cache: dict = field(default_factory=dict, repr=False)  # text -> Conditioning

    # FlowFamily.check_conditioning lets it through for these: every scheduled text is encoded with the
    # same options, so each step's rows have the plain prompt's shape (one T5 window, no chunks).
    serves_families = (SD3, FLUX)

    def encoded(self, text: str) -> Conditioning:
        """The Conditioning of one scheduled text, encoded once."""
        found = self.cache.get(text)
        if found is None:
            found = encode_prompt(
                self.text_encoder, text, clip_skip=self.clip_skip, embeddings=self.embeddings, **dict(self.options)
            )
            self.cache[text] = found
        return found

    def schedule(self, steps: int, order: int = 1) -> list:
        """[(end_step, text)] for a run of `steps` sampler steps (UNet calls = steps x order)."""
        first = self.first_pass_steps * order if self.first_pass_steps else None
        return prompt_schedule(self.text, steps * order, first, self.old_timelines)

    def sampling_hook(self, positive, negative) -> "PromptEditingHook":
        """One hook per run for both prompts (hooks.collect asks for it)."""
        return PromptEditingHook(positive, negative)


def editing_of(cond: Optional[Conditioning]) -> Optional[PromptEditing]:
    if cond is None:
        return None
    return next((e for e in cond.extras if isinstance(e, PromptEditing)), None)


def encode_with_editing(
    text_encoder: TextEncoderBundle,
    text: str,
    *,
    clip_skip: int = 1,
    first_pass_steps: int = 0,
    old_timelines: bool = False,
    embeddings: Optional[EmbeddingLibrary] = None,
    **options,
) -> Conditioning:
    """encode_prompt, plus A1111's prompt editing and alternation.

    A prompt without `[a:b:when]` / `[a|b]` is exactly encode_prompt's result.
    """
    if isinstance(first_pass_steps, bool) or not isinstance(first_pass_steps, int) or first_pass_steps < 0:
        raise ValueError(
            f"first_pass_steps must be a whole number, 0 or more, got {first_pass_steps!r}: "
            "0 for a normal pass, the first pass's steps for a hires-fix pass"
        )
    if not isinstance(text, str) or not has_editing(text):
        return encode_prompt(text_encoder, text, clip_skip=clip_skip, embeddings=embeddings, **options)
    editing = PromptEditing(
        text, text_encoder, clip_skip, first_pass_steps, bool(old_timelines), embeddings, tuple(sorted(options.items()))
    )
    return editing.encoded(first_text(text)).with_extra(editing)


@dataclass
class _Side:
    schedule: list
    conds: list  # Conditioning per schedule entry


class PromptEditingHook(hooks.SamplingHook):
    """Swaps the prompt rows of the UNet batch for the texts of the current step."""

    order = ORDER

    def __init__(self, positive: Conditioning, negative: Optional[Conditioning]):
        self.positive = positive
        self.negative = negative
        self._sides: dict = {}
        self._batches: dict = {}
        self._offset = 0
        self._pooled_key = "text_embeds"

    def __repr__(self) -> str:
        return "PromptEditingHook()"

    def begin(self, run: hooks.RunContext, role: str) -> None:
        order = int(getattr(run.scheduler, "order", 1) or 1)
        steps = int(run.steps or getattr(run.scheduler, "num_inference_steps", 0) or run.total_steps)
        self._offset = run.first_index if run.start_step > 0 else 0
        self._pooled_key = families.of(run.model).pooled_key  # SDXL: text_embeds; SD3/Flux: pooled_projections
        self._sides, self._batches = {}, {}
        sides = [(hooks.POSITIVE, self.positive)] + ([(hooks.NEGATIVE, self.negative)] if run.do_cfg else [])
        for name, cond in sides:
            editing = editing_of(cond)
            if editing is None:
                continue
            schedule = editing.schedule(steps, order)
            self._sides[name] = _Side(schedule, [editing.encoded(text) for _, text in schedule])
            logger.debug("prompt editing (%s): %s", name, schedule)

    def _at(self, name: str, base: Optional[Conditioning], counter: int) -> Optional[Conditioning]:
        side = self._sides.get(name)
        return base if side is None else side.conds[entry_at(side.schedule, counter)]

    def before_unet(self, step: hooks.StepContext, run: hooks.RunContext, role: str) -> None:
        if not self._sides:
            return
        counter = self._offset + step.index
        pos = self._at(hooks.POSITIVE, self.positive, counter)
        neg = self._at(hooks.NEGATIVE, self.negative, counter) if run.do_cfg else None
        key = (id(pos), id(neg))
        if key not in self._batches:
            self._batches[key] = _cfg_batch(pos, neg, run)
        embeds, pooled = self._batches[key]
        step.encoder_hidden_states = embeds
        if pooled is not None and step.added_cond_kwargs and self._pooled_key in step.added_cond_kwargs:
            step.added_cond_kwargs[self._pooled_key] = pooled

    def end(self) -> None:
        self._sides, self._batches = {}, {}


def _rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    return t if t.shape[0] == batch else t.repeat(batch, *([1] * (t.ndim - 1)))


def _cfg_batch(pos: Conditioning, neg: Optional[Conditioning], run: hooks.RunContext):
    """The sampler's layout of the text rows: [negative x B, positive x B] (positive alone without CFG)."""
    batch, device, dtype = run.batch, run.device, run.dtype
    if neg is None:
        embeds = _rows(pos.embeds, batch)
        conds = [pos]
    else:
        length = max(int(pos.embeds.shape[1]), int(neg.embeds.shape[1]))
        a = _pad_tokens(pos.embeds, pos.empty_chunk, length)
        b = _pad_tokens(neg.embeds, neg.empty_chunk, length)
        embeds = torch.cat([_rows(b, batch), _rows(a, batch)])
        conds = [neg, pos]
    pooled = None
    if all(c.pooled is not None for c in conds):
        pooled = torch.cat([_rows(c.pooled, batch) for c in conds]).to(device=device, dtype=dtype)
    return embeds.to(device=device, dtype=dtype), pooled


__all__ = ["ORDER", "PromptEditing", "PromptEditingHook", "editing_of", "encode_with_editing"]
