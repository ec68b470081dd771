"""Regional prompts: each region of the picture gets its own prompt.

How: masked composition of noise predictions (the approach of A1111's
"Latent Couple" / composable diffusion, not InvokeAI's attention masks). A
`RegionalHook` on the base conditioning widens the one UNet call of every
step: for each region and each image it appends one row that carries the
region's prompt (and one more for a regional negative prompt), marked
POSITIVE or NEGATIVE in `StepContext.row_roles`. After the UNet, the rows are
folded back: per latent pixel, with S = sum of strength * mask over the
regions covering it,

    eps = (max(0, 1 - S) * eps_base + sum_r strength_r * mask_r * eps_r) / max(1, S)

So where no region is, the base prompt acts alone; inside a region of
strength 1 its prompt acts alone; strength 0.6 mixes 60 % region, 40 % base;
where regions overlap and their strengths add up to more than 1 they share
the pixel in proportion to their strengths. The weights always sum to 1, so
regions whose prompt equals the base give exactly the base prediction.
Regional negatives compose the negative (unconditional) half the same way.

Why this and not attention masking:
- It owns no attention processor. IP-Adapter installs its own processors and
  ControlNet adds residuals; both see the widened batch (this hook runs
  first, `order` < 0) and act on the region rows too, through `row_roles`.
  Two adapters fighting over `unet.attn_processors` is what it avoids.
- It is the same code for SD1.x and SDXL: an SDXL region row also gets the
  region's pooled embedding (`text_embeds`) and the base row's `time_ids`.
- Region prompts of any length work (rows are padded with empty 77-token
  chunks, as the sampler pads positive and negative).

What it costs: one extra UNet row per region per image (two with a regional
negative) in every step; with CFG the UNet call grows from 2B rows to
2B + R*B. Measured on this workplace's CPU (one thread, best of 5 runs, of
2 for the big UNet), time per step against the plain prompt: the tiny test
UNet at 32x32 latents, one region 1.40x, two regions 1.85x (at 16x16,
1.26x / 1.51x: fixed overheads weigh more); an SD1.5-sized UNet (random
weights) at 256x256, three rows 1.42x, four rows 1.78x of two. So for real
SD1.5/SDXL models expect each region to add about 40-50 % of a plain step
(half a CFG pair), two regions about 1.8-2x, and activation memory to grow
with the rows the same way; a GPU with headroom at small batches may do
somewhat better. Attention masking would add no rows, but needs attention
processors of its own.

Limits: a region prompt longer than the base pads the base rows with empty
chunks too (A1111's rule for positive/negative), which changes the base
prediction slightly.

SD3 and Flux (the flow families): the same hook, composing velocities instead
of noise. The family says what a row carries (`pooled_key`: SD3/Flux
`pooled_projections` get each region's pooled prompt; `shared_cond_keys`:
Flux's `txt_ids` are shared, not widened); Flux dev's guidance rows copy the
base rows'. Flux's `predict` unpacks its 2x2 tokens before the fold, so the
masks act on the unpacked latent grid and packing needs nothing here. T5
prompts cannot be padded with empty chunks, so every region must have the
base's sequence length (`max_sequence_length`), refused otherwise; a mask of
another aspect ratio than the image is refused there too (not stretched).
As with the UNets, the fold is exact per step (outside the masks the base
velocity, bit for bit), but from the second step on the base rows' image
tokens attend to a latent whose inside has changed, so the outside drifts
somewhat from a base-only run (docs/families.md measures it, and against
masked joint attention: tests/benchmarks/test_dit_regional_outside.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from . import families
from . import hooks
from .components import FLUX, SD3, Conditioning

logger = logging.getLogger(__name__)

ORDER = -20  # before every non-widening hook, so they see the final batch
EMPTY_MASK = 1e-6  # a mask whose largest value at latent size is below this acts nowhere


@dataclass(frozen=True)
class Region:
    """One region: where (mask [B or 1, H, W], 0..1), what (conditioning), how much."""

    mask: torch.Tensor
    conditioning: Conditioning
    strength: float = 1.0
    negative: Optional[Conditioning] = None


# --------------------------------------------------------------------------
# building regional conditioning (what DSRegionalPrompt calls)
# --------------------------------------------------------------------------


def _check_region_conditioning(base: Conditioning, cond: Conditioning, which: str) -> None:
    if not isinstance(cond, Conditioning):
        raise ValueError(f"{which} must be a DS_CONDITIONING (Diffusers Text Encode), got {type(cond).__name__}")
    if cond.family != base.family:
        raise ValueError(
            f"{which} was encoded for {cond.family}, but the base conditioning is {base.family}: "
            "encode every region's prompt with the same checkpoint's text encoder"
        )
    if int(cond.embeds.shape[-1]) != int(base.embeds.shape[-1]):
        raise ValueError(
            f"{which} has {int(cond.embeds.shape[-1])}-wide embeddings, the base conditioning "
            f"{int(base.embeds.shape[-1])}: encode every region's prompt with the same text encoder"
        )
    family = families.of(base)
    if family.pooled and cond.pooled is None:
        raise ValueError(
            f"{which} has no pooled embedding, which {family.short_label} needs: encode it with the same "
            "checkpoint's text encoder"
        )
    if family.pooled and int(cond.pooled.shape[-1]) != int(base.pooled.shape[-1]):
        raise ValueError(
            f"{which} has a {int(cond.pooled.shape[-1])}-wide pooled embedding, the base conditioning "
            f"{int(base.pooled.shape[-1])}: encode every region's prompt with the same text encoder"
        )
    if not family.chunked and int(cond.embeds.shape[1]) != int(base.embeds.shape[1]):
        # T5 sequences are padded to max_sequence_length by the encoder; they cannot be padded afterwards.
        raise ValueError(
            f"{which} is {int(cond.embeds.shape[1])} tokens long, the base conditioning "
            f"{int(base.embeds.shape[1])}: encode every region's prompt with the same max_sequence_length "
            f"({family.short_label} prompts are padded to it)"
        )
    if cond.variant != base.variant and cond.variant not in family.shared_text_variants:
        raise ValueError(
            f"{which} was encoded with the {cond.family} {cond.variant} text encoder, the base conditioning "
            f"with the {base.family} {base.variant} one: encode every region's prompt with the text encoder "
            "of the model you sample with"
        )
    if any(hasattr(e, "sampling_hook") for e in cond.extras):
        raise ValueError(
            f"{which} uses prompt editing ([from:to:when] or [a|b]), which works in the base prompt only: "
            "write the region's prompt without it"
        )
    if cond.extras:
        raise ValueError(
            f"{which} carries adapters or regions ({', '.join(type(e).__name__ for e in cond.extras)}), "
            "which act only on the base conditioning: apply them to the output of this node instead"
        )


def _check_mask(mask) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3, 4):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a MASK ([batch, height, width], values 0..1), got {shape}")
    m = mask.detach().to(device="cpu", dtype=torch.float32)
    if m.ndim == 2:
        m = m[None]
    elif m.ndim == 4:  # [B, 1, H, W] from some mask nodes
        m = m.reshape(-1, m.shape[-2], m.shape[-1])
    if not torch.isfinite(m).all():
        raise ValueError("mask holds NaN or infinite values: make it from a picture or a mask node")
    return m.clamp(0.0, 1.0).clone()


def add_region(
    base: Conditioning,
    mask: torch.Tensor,
    conditioning: Conditioning,
    strength: float = 1.0,
    negative: Optional[Conditioning] = None,
) -> Conditioning:
    """A new Conditioning: `base` with one more region (chained calls add regions).

    The base is not mutated: when it already carries a RegionalHook, the new
    value carries a new hook with the old regions plus this one, in its place.
    """
    if not isinstance(base, Conditioning):
        raise ValueError(f"conditioning must be a DS_CONDITIONING, got {type(base).__name__}")
    families.of(base).refuse_adapter(families.REGIONAL, "conditioning")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(
            f"strength must be between 0 and 1, got {strength}: 1 puts only the region's prompt "
            "inside its mask, 0.5 mixes it half and half with the base prompt"
        )
    _check_region_conditioning(base, conditioning, "region_conditioning")
    if negative is not None:
        _check_region_conditioning(base, negative, "region_negative")
    region = Region(_check_mask(mask), conditioning, float(strength), negative)
    old = [e for e in base.extras if isinstance(e, RegionalHook)]
    if not old:
        return base.with_extra(RegionalHook(base.empty_chunk, (region,)))
    hook = RegionalHook(old[-1].base_empty_chunk, old[-1].regions + (region,))
    extras = tuple(hook if e is old[-1] else e for e in base.extras)
    return replace(base, extras=extras)


def rectangle_mask(
    width: int, height: int, x: float, y: float, rect_width: float, rect_height: float, feather: float = 0.0
) -> torch.Tensor:
    """A [1, height, width] mask: 1 inside the rectangle, 0 outside, in pixels.

    `feather` (pixels) turns the hard edge into a linear ramp of that width
    centred on the edge, so neighbouring regions blend instead of seaming;
    edges on the picture's border stay hard (nothing lies beyond them).
    """
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1 pixel, got {width}x{height}")
    if rect_width < 0 or rect_height < 0 or feather < 0:
        raise ValueError(
            f"rectangle width/height and feather must not be negative, got {rect_width}, {rect_height}, {feather}"
        )

    def ramp(n: int, start: float, size: float) -> torch.Tensor:
        centres = torch.arange(n, dtype=torch.float32) + 0.5
        # Signed distance to the nearest edge; an edge on or past the border has
        # nothing beyond it, so it is not feathered (the region stays full there).
        before = centres - start if start > 0 else torch.full_like(centres, float("inf"))
        after = start + size - centres if start + size < n else torch.full_like(centres, float("inf"))
        inside = torch.minimum(before, after)
        if size <= 0:
            return torch.zeros(n)
        if feather > 0:
            return (0.5 + inside / float(feather)).clamp(0.0, 1.0)
        return (inside >= 0).to(torch.float32)

    return (ramp(height, y, rect_height)[:, None] * ramp(width, x, rect_width)[None, :])[None]


# --------------------------------------------------------------------------
# the hook
# --------------------------------------------------------------------------


@dataclass
class _Slot:
    """B appended rows: one region's prompt for one half (POSITIVE or NEGATIVE) of CFG."""

    role: str
    embeds: torch.Tensor  # [B, L, D]
    empty_chunk: torch.Tensor
    pooled: Optional[torch.Tensor]  # [B, P] for SDXL
    weight: torch.Tensor  # strength * mask at latent size, [B, 1, h, w], float32


@dataclass
class _RunState:
    slots: list
    base_rows: dict  # role -> LongTensor of the base rows of that half
    total: dict  # role -> S, [B, 1, h, w]
    rows_before: int = 0


def _mask_at(
    mask: torch.Tensor, size: tuple, batch: int, which: str, pixel_size: tuple, stretch: bool = True,
    family_label: str = "",
) -> torch.Tensor:
    """The mask at latent size [batch, 1, h, w], area-averaged (any source size).

    stretch=False (the transformer families) refuses a mask of another aspect
    ratio than the image instead of stretching it: those are new workflows,
    where a stretched mask is a mistake rather than an old habit.
    """
    if mask.shape[0] not in (1, batch):
        raise ValueError(
            f"{which} has a batch of {mask.shape[0]} masks but the latent batch is {batch}: "
            "use one mask for all images or one per image"
        )
    if tuple(mask.shape[-2:]) not in (tuple(size), tuple(pixel_size)):
        ratio_mask = mask.shape[-1] / mask.shape[-2]
        ratio_image = pixel_size[1] / pixel_size[0]
        if not stretch and abs(ratio_mask - ratio_image) > 0.01 * ratio_image:
            raise ValueError(
                f"{which} is {mask.shape[-1]}x{mask.shape[-2]} pixels, the image {pixel_size[1]}x{pixel_size[0]}: "
                f"{family_label} regional masks must have the image's aspect ratio (they are not stretched). "
                "Make the mask at the image's width and height (Diffusers Rectangle Mask or Region Canvas)"
            )
        logger.info(
            "%s is %sx%s, the image %sx%s: resizing it%s", which, mask.shape[-1], mask.shape[-2],
            pixel_size[1], pixel_size[0], " (the aspect ratio differs: it is stretched)"
            if abs(ratio_mask - ratio_image) > 0.01 else "",
        )
    m = mask[:, None]
    if tuple(m.shape[-2:]) != tuple(size):
        shrinking = m.shape[-2] >= size[0] and m.shape[-1] >= size[1]
        if shrinking:  # average each latent pixel's block: soft edges stay soft
            m = F.interpolate(m, size=size, mode="area")
        else:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return m.expand(batch, -1, -1, -1).clamp(0.0, 1.0)


def _rows(t: torch.Tensor, batch: int) -> torch.Tensor:
    return t if t.shape[0] == batch else t.expand(batch, *t.shape[1:])


def _pad_tokens(embeds: torch.Tensor, chunk: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - int(embeds.shape[1])
    if missing <= 0:
        return embeds
    size = int(chunk.shape[1])
    if size == 0 or missing % size:
        raise ValueError(
            f"a regional prompt is {int(embeds.shape[1])} tokens long and cannot be padded to {length} "
            f"with {size}-token chunks: encode every prompt with the same text encoder"
        )
    chunk = chunk.to(embeds.device, embeds.dtype).expand(embeds.shape[0], -1, -1)
    return torch.cat([embeds] + [chunk] * (missing // size), dim=1)


class RegionalHook(hooks.SamplingHook):
    """Widens the UNet batch with region rows; folds them back by mask (see the module doc).

    The regions are fixed at construction (the value is cached by ComfyUI);
    only the per-run tensors live on the instance, from `begin` to `end`.
    """

    order = ORDER
    # FlowFamily.check_conditioning lets it through for these: the composition is family-blind, and
    # the flow families' predict unpacks Flux's 2x2 tokens, so the masks act on the unpacked latent grid.
    serves_families = (SD3, FLUX)

    def __init__(self, base_empty_chunk: torch.Tensor, regions: tuple):
        self.base_empty_chunk = base_empty_chunk
        self.regions = tuple(regions)
        self._state: Optional[_RunState] = None
        self._pooled_key, self._shared_keys = "text_embeds", ()

    def __repr__(self) -> str:
        return f"RegionalHook({len(self.regions)} regions)"

    # ---- begin: everything that does not change between steps
    def begin(self, run: hooks.RunContext, role: str) -> None:
        model, batch, device = run.model, run.batch, run.device
        family = families.of(model)
        self._pooled_key, self._shared_keys = family.pooled_key, tuple(family.shared_cond_keys)
        for i, region in enumerate(self.regions, 1):
            if region.conditioning.guidance is not None:  # Flux dev: the rows copy the base rows' guidance
                logger.warning(
                    "region %s's prompt carries guidance %s, which is not used: every region takes the "
                    "base prompt's guidance; set it with Diffusers Flux Guidance on the base prompt",
                    i, region.conditioning.guidance,
                )
        for i, region in enumerate(self.regions, 1):
            for cond, what in ((region.conditioning, "conditioning"), (region.negative, "negative")):
                if cond is not None and cond.family != model.family:
                    raise ValueError(
                        f"region {i}'s {what} was encoded for {cond.family}, but the model "
                        f"{model.name!r} is {model.family}: encode it with the same checkpoint's text encoder"
                    )
        halves = {hooks.POSITIVE: torch.arange(batch, 2 * batch) if run.do_cfg else torch.arange(batch)}
        if run.do_cfg:
            halves[hooks.NEGATIVE] = torch.arange(batch)
        # Where the region prompts go: the half of the socket this conditioning is on.
        if role == hooks.NEGATIVE:
            prompt_roles = [hooks.NEGATIVE] if run.do_cfg else []
        elif role == hooks.BOTH:
            prompt_roles = list(halves)
        else:
            prompt_roles = [hooks.POSITIVE]
        slots = []
        for i, region in enumerate(self.regions, 1):
            weight = _mask_at(region.mask, run.latent_size, batch, f"region {i}'s mask", run.pixel_size,
                              family.stretch_region_masks, family.label)
            if float(weight.max()) < EMPTY_MASK:
                logger.warning(
                    "region %s has an empty mask (all zero at %sx%s latent pixels): it has no effect; "
                    "check the mask's position and size", i, run.latent_size[1], run.latent_size[0],
                )
                continue
            if region.strength == 0.0:
                logger.info("region %s has strength 0: skipped", i)
                continue
            weight = (weight * region.strength).to(device=device, dtype=torch.float32)
            wanted = [(r, region.conditioning) for r in prompt_roles]
            if region.negative is not None:
                if role in (hooks.POSITIVE, hooks.MODEL, hooks.LATENT) and run.do_cfg:
                    wanted.append((hooks.NEGATIVE, region.negative))
                else:
                    logger.warning(
                        "region %s's negative prompt is not used: it acts only when the regional "
                        "conditioning is the sampler's positive and cfg is not 1", i,
                    )
            for r, cond in wanted:
                slots.append(_Slot(
                    role=r,
                    embeds=_rows(cond.embeds, batch).to(device=device, dtype=run.dtype),
                    empty_chunk=cond.empty_chunk,
                    pooled=None if cond.pooled is None
                    else _rows(cond.pooled, batch).to(device=device, dtype=run.dtype),
                    weight=weight,
                ))
        total = {}
        for r in halves:
            s = [slot.weight for slot in slots if slot.role == r]
            total[r] = torch.stack(s).sum(0) if s else None
        self._state = _RunState(slots, halves, total)

    # ---- before_unet: append the region rows
    def before_unet(self, step: hooks.StepContext, run: hooks.RunContext, role: str) -> None:
        state = self._state
        if state is None or not state.slots:
            return
        n0 = int(step.x_in.shape[0])
        state.rows_before = n0
        src = torch.cat([state.base_rows[slot.role] for slot in state.slots]).to(step.x_in.device)

        def widen(t):
            """Copy the base rows of each slot's half onto the end of a batch-shaped tensor."""
            if not isinstance(t, torch.Tensor) or t.shape[:1] != (n0,):
                return t
            return torch.cat([t, t.index_select(0, src.to(t.device))])

        step.x_in = widen(step.x_in)
        step.timestep_cond = widen(step.timestep_cond)  # guidance embedding rows (LCM-style UNets)
        ehs = step.encoder_hidden_states
        length = max([int(ehs.shape[1])] + [int(s.embeds.shape[1]) for s in state.slots])
        ehs = _pad_tokens(ehs, self.base_empty_chunk, length)
        regions = [_pad_tokens(s.embeds, s.empty_chunk, length).to(ehs.dtype) for s in state.slots]
        step.encoder_hidden_states = torch.cat([ehs] + regions)
        if step.added_cond_kwargs:
            shared, key = self._shared_keys, self._pooled_key  # set by begin from the family
            added = {k: v if k in shared else widen(v) for k, v in step.added_cond_kwargs.items()}
            if key in added and all(s.pooled is not None for s in state.slots):
                pooled = step.added_cond_kwargs[key]
                added[key] = torch.cat([pooled] + [s.pooled.to(pooled.dtype) for s in state.slots])
            step.added_cond_kwargs = added
        if step.down_residuals is not None:
            step.down_residuals = [widen(t) for t in step.down_residuals]
            step.mid_residual = widen(step.mid_residual)
        step.row_roles = list(step.row_roles) + [r for s in state.slots for r in [s.role] * run.batch]

    # ---- after_unet: fold the region rows back into their half
    def after_unet(self, noise_pred, step, run, role):
        state = self._state
        if state is None or not state.slots:
            return noise_pred
        n0, batch = state.rows_before, run.batch
        expected = n0 + len(state.slots) * batch
        if int(noise_pred.shape[0]) != expected:
            raise RuntimeError(
                f"regional prompts expected {expected} UNet rows back, got {int(noise_pred.shape[0])}: "
                "a hook that ran after it changed the batch without folding it back"
            )
        base, extra = noise_pred[:n0], noise_pred[n0:]
        # Half-precision predictions are composed in float32; float32/64 as they are.
        work = base.dtype if base.dtype in (torch.float32, torch.float64) else torch.float32
        out = base.clone()
        for r, rows in state.base_rows.items():
            total = state.total[r]
            if total is None:
                continue
            rows = rows.to(base.device)
            e0 = base.index_select(0, rows).to(work)
            # The formula of the module docstring rewritten as e0 + sum w_r (e_r - e0) / max(1, S):
            # the same weights, but a region that predicts exactly e0 changes nothing, bit for bit.
            norm = total.clamp(min=1.0)
            acc = e0
            for k, slot in enumerate(state.slots):
                if slot.role == r:
                    delta = extra[k * batch : (k + 1) * batch].to(work) - e0
                    acc = acc + (slot.weight / norm).to(work) * delta
            out[rows] = acc.to(out.dtype)
        return out

    def end(self) -> None:
        self._state = None


__all__ = ["ORDER", "Region", "RegionalHook", "add_region", "rectangle_mask"]
