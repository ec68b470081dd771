"""ControlNet as a value: a hook on the conditioning, run inside the one loop.

`apply_controlnet` returns new positive/negative Conditioning values that carry
the same `ControlNetHook` (so the sampler binds it once, with role BOTH). At
every UNet evaluation the hook runs the ControlNet on the rows of the UNet
batch it acts on, with each row's own text embeddings (and SDXL's added
conditioning), and adds its residuals with `StepContext.add_residuals`, so
chained units add up as diffusers' MultiControlNetModel does. It follows
`StableDiffusion[XL]ControlNetPipeline` step for step:

* the hint image is prepared like the pipeline's `prepare_image`: an IMAGE
  tensor (0..1) resized to the generated pixel size with
  `F.interpolate(size=...)` (nearest, diffusers' tensor path), not normalised;
* `conditioning_scale` is the strength, times the step window
  `keep = 1 - (i/n < start or (i+1)/n > end)` over the run's n evaluations
  (diffusers' `controlnet_keep`; a step outside the window adds nothing);
* guess mode (or a ControlNet whose config pools its conditions): the
  ControlNet sees only the positive rows and the negative rows get zeros; the
  ControlNet itself scales its residuals by logspace(-1, 0).

Beyond diffusers: an optional mask multiplies every residual by the mask
resized to that residual's resolution (control limited to a region); a unit
attached to the positive (or negative) conditioning only acts on those rows.
The ControlNet module is only called, never changed, so a run without the
unit sees nothing of it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import families
from . import hooks
from .components import SD1, SDXL, Conditioning

logger = logging.getLogger(__name__)

FAMILY_LABELS = {SD1: "SD1.x", SDXL: "SDXL"}


@dataclass(frozen=True, eq=False)
class ControlNetBundle:
    """DS_CONTROLNET: one loaded ControlNetModel and its family."""

    family: str
    name: str
    module: Any  # diffusers ControlNetModel
    dtype: torch.dtype
    # Transformer ControlNets that VAE-encode their hint: the VAE input is pixels * a + b
    # (controlnet_dit_files.hint_affine): (2, -1) as the pipelines' image processor, (127.5, 0.5)
    # for Stability's SD3.5 canny ControlNet.
    hint_affine: tuple = (2.0, -1.0)


@dataclass(frozen=True, eq=False)
class ControlNetUnit:
    """What one Apply ControlNet node chose (all plain values)."""

    control_net: ControlNetBundle
    image: torch.Tensor  # IMAGE [B, H, W, C], 0..1
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mask: Optional[torch.Tensor] = None  # MASK [B, H, W] or [H, W], 0..1
    guess_mode: bool = False


# ---------------------------------------------------------------- checks


def check_unit(unit: ControlNetUnit) -> None:
    """diffusers' check_inputs for one unit: name the input, the value, the fix."""
    image = unit.image
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"image must be an IMAGE ([batch, height, width, 1/3/4 channels]), got {shape}: connect a "
            "Load Image or a hint preprocessor such as Canny Edges"
        )
    if not 0.0 <= unit.start < unit.end <= 1.0:
        raise ValueError(
            f"start_percent ({unit.start}) must be lower than end_percent ({unit.end}), both within 0..1: "
            "the ControlNet acts on the part of the schedule between them"
        )
    if unit.strength < 0:
        raise ValueError(f"strength must be 0 or more, got {unit.strength}")
    mask = unit.mask
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3)):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a MASK ([batch, height, width] or [height, width]), got {shape}")


def _refiner_message(control_net: ControlNetBundle, what: str) -> str:
    kind = FAMILY_LABELS.get(control_net.family, control_net.family)
    return (
        f"control_net {control_net.name!r} is an {kind} ControlNet, but {what} the SDXL refiner: "
        f"{kind} ControlNets do not apply to the SDXL refiner (its UNet has other blocks and takes "
        "1280-wide text), and no ControlNet is made for it. Apply the ControlNet to the base model's "
        "prompts (the sampler before the hand-off) and give the refiner's sampler its own prompts "
        "without it."
    )


def check_compatible(control_net: ControlNetBundle, model) -> None:
    """Refuse a ControlNet of another family or shape before any shape error."""
    families.of(model).refuse_adapter(families.CONTROLNET, f"control_net {control_net.name!r}")
    cn, unet = control_net.module.config, model.unet.config
    if families.of(model).adapter_refusal(families.CONTROLNET):
        raise ValueError(_refiner_message(control_net, f"the model {model.name!r} is"))
    if control_net.family != model.family:
        raise ValueError(
            f"control_net {control_net.name!r} is an {FAMILY_LABELS.get(control_net.family, control_net.family)} "
            f"ControlNet, but the model {model.name!r} is {FAMILY_LABELS.get(model.family, model.family)}: "
            f"load a ControlNet made for {FAMILY_LABELS.get(model.family, model.family)} "
            f"(e.g. {'controlnet-canny-sdxl-1.0' if model.family == SDXL else 'control_v11p_sd15_canny'})"
        )
    problems = []
    for key in ("cross_attention_dim", "projection_class_embeddings_input_dim", "addition_time_embed_dim"):
        a, b = getattr(cn, key, None), getattr(unet, key, None)
        if a != b:
            problems.append(f"{key} {a} vs {b}")
    if list(cn.block_out_channels) != list(unet.block_out_channels) or cn.layers_per_block != unet.layers_per_block:
        problems.append(
            f"blocks {list(cn.block_out_channels)}x{cn.layers_per_block} vs "
            f"{list(unet.block_out_channels)}x{unet.layers_per_block}"
        )
    if problems:
        raise ValueError(
            f"control_net {control_net.name!r} does not fit the model {model.name!r} "
            f"({'; '.join(problems)}): it was made for another base model; load one made for this model's "
            "architecture"
        )


# ------------------------------------------------------------ preparation


def prepare_hint(image: torch.Tensor, pixel_size: tuple[int, int]) -> torch.Tensor:
    """IMAGE [B,H,W,C] -> [B,3,H',W'] float32 at the generated pixel size.

    diffusers' control image processor on a tensor: nearest resize, no
    normalisation (ControlNets take 0..1). Grey hints are repeated to RGB and
    an alpha channel is dropped.
    """
    hint = image.detach().to(dtype=torch.float32).movedim(-1, 1)
    if hint.shape[1] == 1:
        hint = hint.repeat(1, 3, 1, 1)
    elif hint.shape[1] == 4:
        hint = hint[:, :3]
    return F.interpolate(hint, size=tuple(int(v) for v in pixel_size))


def step_keep(state, unit, step: hooks.StepContext, run: hooks.RunContext) -> float:
    """The unit's weight at this step: 0 when it skips the run or the step lies outside its window
    (diffusers' controlnet_keep over the run's evaluations), else 1."""
    if state is None or state["skip"]:
        return 0.0
    i, n = step.index, len(run.timesteps)
    return 1.0 - float(i / n < unit.start or (i + 1) / n > unit.end)


def _rows_for_batch(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Pick one entry per sample: a batch-1 tensor serves every sample."""
    if t.shape[0] not in (1, batch):
        raise ValueError(
            f"{what} has batch {t.shape[0]} but the latent batch is {batch}: use one {what} or one per latent"
        )
    return t


class ControlNetHook(hooks.SamplingHook):
    """One ControlNet unit in the sampling loop (see the module docstring).

    `load_modules`, when given, is called in `begin` with the ControlNet
    module so the node layer can have ComfyUI load it on its device (the
    engine never imports ComfyUI). Per-run tensors live on the hook between
    `begin` and `end` only.
    """

    order = 0

    def __init__(self, unit: ControlNetUnit, load_modules: Optional[Callable[[list], None]] = None):
        check_unit(unit)
        self.unit = unit
        self.load_modules = load_modules
        self._run = None

    def modules(self) -> list:
        """The torch modules this hook runs (for a loader that loads them with the UNet)."""
        return [self.unit.control_net.module]

    # ----------------------------------------------------------- lifecycle

    def begin(self, run: hooks.RunContext, role: str) -> None:
        unit, cn = self.unit, self.unit.control_net
        check_compatible(cn, run.model)
        if self.load_modules is not None:
            self.load_modules(self.modules())
        try:
            device = next(cn.module.parameters()).device
        except StopIteration:
            device = run.device
        state = {"device": device, "dtype": cn.dtype, "skip": False, "masks": {}}
        hint = _rows_for_batch(prepare_hint(unit.image, run.pixel_size), run.batch, "hint image")
        state["hint"] = hint.to(device=device, dtype=cn.dtype)
        if unit.mask is not None:
            mask = unit.mask.detach().to(torch.float32)
            mask = mask[None] if mask.ndim == 2 else mask
            mask = _rows_for_batch(mask, run.batch, "mask")
            if float(mask.max()) <= 0.0:
                logger.warning(
                    "ControlNet %r: its mask is empty (all zero), so this ControlNet does nothing; "
                    "paint the region it should control or disconnect the mask", cn.name,
                )
                state["skip"] = True
            if float(mask.min()) < 1.0:  # an all-white mask is no limit: skip the resampling
                state["mask"] = mask[:, None]
        if unit.strength == 0.0:
            state["skip"] = True
        self._run = state

    def end(self) -> None:
        self._run = None

    # ------------------------------------------------------------ the step

    def _rows(self, roles: list, role: str, guess: bool) -> list[int]:
        if role == hooks.POSITIVE or guess:
            wanted = {hooks.POSITIVE}
        elif role == hooks.NEGATIVE:
            wanted = {hooks.NEGATIVE}
        else:
            wanted = {hooks.POSITIVE, hooks.NEGATIVE}
        return [k for k, r in enumerate(roles) if r in wanted]

    def _mask_at(self, size: tuple[int, int], sample_index: torch.Tensor, device, dtype) -> torch.Tensor:
        masks = self._run["masks"]
        if size not in masks:
            mask = self._run["mask"]
            if tuple(mask.shape[-2:]) != size:
                mask = F.interpolate(mask, size=size, mode="bilinear", antialias=True, align_corners=False)
            masks[size] = mask.to(device=device, dtype=dtype)
        mask = masks[size]
        return mask[sample_index % mask.shape[0]]

    def before_unet(self, step: hooks.StepContext, run: hooks.RunContext, role: str) -> None:
        state = self._run
        keep = step_keep(state, self.unit, step, run)
        if keep == 0.0:
            return
        module = self.unit.control_net.module
        guess = bool(self.unit.guess_mode or module.config.global_pool_conditions)
        rows_total = int(step.x_in.shape[0])
        roles = list(step.row_roles) if len(step.row_roles) == rows_total else [hooks.POSITIVE] * rows_total
        rows = self._rows(roles, role, guess)
        if not rows:
            return
        every = len(rows) == rows_total
        index = torch.tensor(rows, device=step.x_in.device)
        device, dtype = state["device"], state["dtype"]

        def pick(t: torch.Tensor) -> torch.Tensor:
            t = t if every else t.index_select(0, index.to(t.device))
            return t.to(device=device, dtype=dtype)

        sample_index = index.cpu() % run.batch
        hint = state["hint"]
        hint = hint.expand(len(rows), -1, -1, -1) if hint.shape[0] == 1 else hint[sample_index.to(hint.device)]
        x = pick(step.x_in[:, : int(module.config.in_channels)])
        added = None
        if step.added_cond_kwargs and getattr(module.config, "addition_embed_type", None) == "text_time":
            added = {k: pick(step.added_cond_kwargs[k]) for k in ("text_embeds", "time_ids")}
        down, mid = module(
            x,
            step.timestep,
            encoder_hidden_states=pick(step.encoder_hidden_states),
            controlnet_cond=hint,
            conditioning_scale=float(self.unit.strength) * keep,
            guess_mode=guess,
            added_cond_kwargs=added,
            return_dict=False,
        )
        out_device, out_dtype = step.x_in.device, step.x_in.dtype
        residuals = [t.to(device=out_device, dtype=out_dtype) for t in (*down, mid)]
        if "mask" in state:
            residuals = [
                r * self._mask_at(tuple(r.shape[-2:]), sample_index, out_device, out_dtype) for r in residuals
            ]
        if not every:
            full = []
            for r in residuals:
                z = r.new_zeros((rows_total, *r.shape[1:]))
                z[index.to(out_device)] = r
                full.append(z)
            residuals = full
        step.add_residuals(residuals[:-1], residuals[-1])


# ------------------------------------------------------------------- apply


def apply_controlnet(
    positive: Conditioning,
    negative: Optional[Conditioning],
    control_net: ControlNetBundle,
    image: torch.Tensor,
    *,
    strength: float = 1.0,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    mask: Optional[torch.Tensor] = None,
    guess_mode: bool = False,
    load_modules: Optional[Callable[[list], None]] = None,
    vae=None,
    control_mode: int = -1,
) -> tuple[Conditioning, Optional[Conditioning]]:
    """New (positive, negative) carrying one ControlNet unit; the inputs are untouched.

    strength 0 returns the inputs as they are (the unit would add nothing). A
    ControlNet of another family than the model is refused when sampling
    starts (`check_compatible`), with a message naming both.
    """
    if not isinstance(control_net, ControlNetBundle):
        raise ValueError(
            f"control_net must be a DS_CONTROLNET from Load ControlNet, got {type(control_net).__name__}"
        )
    from . import controlnet_dit

    if control_net.family in controlnet_dit.DIT_FAMILIES or positive.family in controlnet_dit.DIT_FAMILIES:
        # SD3 / Flux transformer ControlNets take VAE latents and give per-block residuals.
        if control_net.family != positive.family:
            raise controlnet_dit.wrong_family(control_net, positive.family, "positive was encoded for")
        if guess_mode:
            raise ValueError(
                f"guess_mode is on, but control_net {control_net.name!r} is "
                f"{controlnet_dit.a_label(control_net.family)} ControlNet, which has no guess mode: turn it off"
            )
        unit = controlnet_dit.DitControlNetUnit(
            control_net, image, vae, float(strength), float(start_percent), float(end_percent), mask, control_mode
        )
        return controlnet_dit.apply(positive, negative, unit, load_modules)
    families.of(positive).refuse_adapter(families.CONTROLNET, f"control_net {control_net.name!r}")
    if families.of(positive).adapter_refusal(families.CONTROLNET):
        raise ValueError(_refiner_message(control_net, "positive was encoded with the text encoder of"))
    if control_mode != -1:
        raise ValueError(
            f"control_mode is {control_mode}, but control_net {control_net.name!r} is an "
            f"{FAMILY_LABELS.get(control_net.family, control_net.family)} ControlNet, which has no modes "
            "(only Flux Union ControlNets do): set control_mode to -1"
        )
    unit = ControlNetUnit(
        control_net, image, float(strength), float(start_percent), float(end_percent), mask, bool(guess_mode)
    )
    hook = ControlNetHook(unit, load_modules)  # checks the unit
    if strength == 0.0:
        return positive, negative
    return positive.with_extra(hook), (negative.with_extra(hook) if negative is not None else None)
