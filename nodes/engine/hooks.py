"""How adapters join the one denoising loop without mutating cached models.

ControlNet, IP-Adapter, LoRA, regional prompts and inpainting UNets all change
what one UNet call sees. Each is a value attached to a socket value (a
`ModelBundle.patches` entry, a `Conditioning.extras` entry, or a LATENT's
"ds_hooks" list) that implements `SamplingHook`. The sampler collects them,
calls `begin` once before the loop (install attention processors, set LoRA
scales), `before_unet` before every UNet evaluation (add ControlNet residuals,
replace the UNet input, add cross-attention kwargs, widen the batch),
`after_unet` on the raw noise prediction (fold a widened batch back),
`after_step` after every scheduler step, and `end` always, even on Cancel or
error (restore everything). Hooks run in ascending `order` (then attachment
order); a hook that widens the UNet batch (regional prompts add rows) uses a
negative order so that the others see the final batch, described row by row
in `StepContext.row_roles`. So one pass composes all of them, and a following run without
them sees the untouched modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

POSITIVE = "positive"
NEGATIVE = "negative"
BOTH = "both"  # attached to the positive and the negative conditioning alike
MODEL = "model"
LATENT = "latent"


@dataclass
class RunContext:
    """What a hook may know about the whole run (set once, read-only)."""

    model: Any  # ModelBundle
    batch: int  # images in the latent batch (before CFG doubling)
    do_cfg: bool  # True: the UNet batch is [negative x batch, positive x batch]
    device: torch.device
    dtype: torch.dtype
    latent_size: tuple[int, int]  # (h, w) in latent pixels
    pixel_size: tuple[int, int]  # (H, W) in image pixels
    timesteps: torch.Tensor  # the timesteps this run will evaluate
    total_steps: int  # the full schedule's length (before denoise/start/end)
    first_index: int  # index of timesteps[0] in the full schedule
    scheduler: Any
    cfg: float
    encoder_hidden_states: torch.Tensor  # the CFG-batched text embeddings
    added_cond_kwargs: Optional[dict]
    steps: int = 0  # the sampler's steps input (0: unknown, read the scheduler's)
    start_step: int = 0  # the sampler's start_step: > 0 continues an earlier partial run
    # std * eps of the inpaint masked image's VAE posterior (unscaled), drawn by
    # the sampler after the starting noise (posterior.py); None in "mode".
    masked_image_deviation: Optional[torch.Tensor] = None


@dataclass
class StepContext:
    """One UNet evaluation; hooks may change the fields marked mutable."""

    index: int  # position in RunContext.timesteps
    timestep: torch.Tensor
    progress: float  # (first_index + index) / total_steps: 0 at the schedule's start
    latents: torch.Tensor  # the current latents (scaled space, not CFG-doubled)
    # mutable: the UNet call's inputs
    x_in: torch.Tensor
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: Optional[dict]
    timestep_cond: Optional[torch.Tensor] = None  # guidance embedding of LCM-style UNets, one row per x_in row
    cross_attention_kwargs: dict = field(default_factory=dict)
    down_residuals: Optional[list] = None
    mid_residual: Optional[torch.Tensor] = None
    # One entry per row of x_in: NEGATIVE or POSITIVE (which half of CFG the
    # row belongs to). A hook that adds rows appends their roles here.
    row_roles: list = field(default_factory=list)
    # Transformer (DiT) ControlNet residuals by the denoiser's keyword
    # (controlnet_block_samples, block_controlnet_hidden_states, ...): lists
    # of tensors that chained units sum element by element (MultiControlNet).
    block_residuals: dict = field(default_factory=dict)

    def add_block_residuals(self, key: str, samples: Optional[list]) -> None:
        """Sum one DiT ControlNet's per-block residuals into this call."""
        if samples is None:
            return
        have = self.block_residuals.get(key)
        if have is None:
            self.block_residuals[key] = list(samples)
            return
        if len(have) != len(samples):
            raise ValueError(
                f"chained ControlNets give {len(have)} and {len(samples)} {key}: they were made for "
                "different transformer depths; chain ControlNets of the same architecture"
            )
        self.block_residuals[key] = [a + b for a, b in zip(have, samples)]

    def add_residuals(self, down: list, mid: torch.Tensor) -> None:
        """Sum ControlNet-style residuals into this call (several units add up)."""
        if self.down_residuals is None:
            self.down_residuals = list(down)
            self.mid_residual = mid
        else:
            self.down_residuals = [a + b for a, b in zip(self.down_residuals, down)]
            self.mid_residual = self.mid_residual + mid

    def unet_kwargs(self) -> dict:
        kwargs: dict = {}
        if self.cross_attention_kwargs:
            kwargs["cross_attention_kwargs"] = self.cross_attention_kwargs
        if self.down_residuals is not None:
            kwargs["down_block_additional_residuals"] = self.down_residuals
            kwargs["mid_block_additional_residual"] = self.mid_residual
        return kwargs


class SamplingHook:
    """Base class: override what you need; every method defaults to nothing."""

    order: int = 0  # lower runs first; batch-widening hooks use a negative order

    def draw(self, model, batch: int, pixel_size: tuple, generators: list) -> None:
        """Before the starting noise: draw what the pipeline draws with the seed first
        (a DiT ControlNet's VAE-encoded hint). Called on every run, before `begin`."""

    def begin(self, run: RunContext, role: str) -> None:
        pass

    def before_unet(self, step: StepContext, run: RunContext, role: str) -> None:
        pass

    def after_unet(self, noise_pred: torch.Tensor, step: StepContext, run: RunContext, role: str) -> torch.Tensor:
        """The UNet output for step.x_in's rows; return it with the rows CFG expects."""
        return noise_pred

    def after_step(self, latents: torch.Tensor, step: StepContext, run: RunContext, role: str) -> torch.Tensor:
        return latents

    def end(self) -> None:
        pass

    def modules(self) -> list:
        """The torch modules this hook runs besides the UNet (ControlNets,
        image encoders), so the node layer can have them loaded with it."""
        return []


def modules_of(bound: list["BoundHook"]) -> list:
    """Every extra module the run's hooks need, once each."""
    seen: dict[int, object] = {}
    for b in bound:
        for module in b.hook.modules():
            seen.setdefault(id(module), module)
    return list(seen.values())


@dataclass(frozen=True)
class BoundHook:
    hook: SamplingHook
    role: str


def collect(model, positive, negative, latent: dict) -> list[BoundHook]:
    """Every hook of this run, once each, with where it was attached.

    A hook attached to both the positive and the negative conditioning (the
    usual ControlNet wiring) is bound once with role BOTH.
    """
    bound: list[BoundHook] = []
    seen: dict[int, int] = {}

    def add(hook, role):
        if not isinstance(hook, SamplingHook):
            return
        if id(hook) in seen:
            i = seen[id(hook)]
            if {bound[i].role, role} == {POSITIVE, NEGATIVE}:
                bound[i] = BoundHook(hook, BOTH)
            return
        seen[id(hook)] = len(bound)
        bound.append(BoundHook(hook, role))

    # An extra that needs both prompts (prompt editing) gives one hook for the run.
    paired = next(
        (e for c in (positive, negative) if c is not None for e in getattr(c, "extras", ()) if hasattr(e, "sampling_hook")),
        None,
    )
    if paired is not None:
        add(paired.sampling_hook(positive, negative), BOTH)
    for patch in getattr(model, "patches", ()):
        add(patch, MODEL)
    for extra in getattr(positive, "extras", ()):
        add(extra, POSITIVE)
    if negative is not None:
        for extra in getattr(negative, "extras", ()):
            add(extra, NEGATIVE)
    for hook in latent.get("ds_hooks", ()) or ():
        add(hook, LATENT)
    return sorted(bound, key=lambda b: getattr(b.hook, "order", 0))  # stable: ties keep attachment order
