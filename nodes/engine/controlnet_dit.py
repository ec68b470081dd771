"""Transformer (DiT) ControlNets for SD3 / SD3.5 and Flux.1: residuals into the transformer call.

Same value design as `controlnet.py` (a hook attached to the prompts, run
inside the one loop), but the transformer ControlNets differ from the UNet
ones in what they take and give, following diffusers'
`StableDiffusion3ControlNetPipeline` and `FluxControlNetPipeline`:

* the hint is a *latent*: the IMAGE is resized to the generated size,
  normalised to -1..1 and VAE-encoded, then shifted and scaled
  ((z - shift) * scale; InstantX SD3 ControlNets, which pool zeros, skip the
  shift) and, for Flux, packed into 2x2 tokens. XLabs-style Flux ControlNets
  (an `input_hint_block`) take the normalised pixels instead, and need no VAE.
* random draws: FluxControlNetPipeline *samples* the VAE posterior of the
  hint with the run's generator (`retrieve_latents(vae.encode(x),
  generator)`) before it draws the starting latents, one hint after the other
  for chained units. `draw` does exactly that, called by the sampler before
  the noise. StableDiffusion3ControlNetPipeline samples it with torch's
  *global* RNG (`latent_dist.sample()` without a generator, one draw per CFG
  row), which no seed reproduces; the pack takes the posterior mean there
  (deterministic; the difference is the VAE's tiny posterior spread).
* residuals are per-transformer-block token tensors, summed over chained
  units (diffusers' Flux/SD3 MultiControlNetModel) and handed to the
  family's `predict` as the transformer's keyword
  (`controlnet_block_samples` / `controlnet_single_block_samples`, or
  `block_controlnet_hidden_states`).
* rows: SD3's pipeline runs the ControlNet on the CFG batch, each row with
  its own prompt; Flux's (true CFG) runs it on the positive prompt only and
  gives the negative pass the same residuals.
* InstantX Union Flux ControlNets take a `control_mode` (an index into their
  mode embedding: canny, tile, depth, ...); -1 means none.

Strength and step window are diffusers' conditioning_scale and
controlnet_keep. Beyond diffusers: an optional mask scales every residual
token by the mask resized to the token grid.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import hooks, posterior, vae_codec
from .components import FLUX, SD3, Conditioning
from .families.unet import per_sample

logger = logging.getLogger(__name__)

DIT_FAMILIES = (SD3, FLUX)
LABELS = {SD3: "SD3 / SD3.5", FLUX: "Flux.1", "sd1": "SD1.x", "sdxl": "SDXL"}
EXAMPLES = {SD3: "an SD3ControlNetModel such as SD3-Controlnet-Canny", FLUX: "a FluxControlNetModel such as "
            "FLUX.1-dev-Controlnet-Union", "sd1": "control_v11p_sd15_canny", "sdxl": "controlnet-canny-sdxl-1.0"}


def label(family: str) -> str:
    return LABELS.get(family, family)


def a_label(family: str) -> str:
    """'an SD3 / SD3.5', 'a Flux.1': the label with its article."""
    text = label(family)
    return ("a " if text.startswith("Flux") else "an ") + text


def wrong_family(control_net, model_family: str, where: str) -> ValueError:
    """The refusal of a ControlNet made for another family, naming both and the fix."""
    return ValueError(
        f"control_net {control_net.name!r} is {a_label(control_net.family)} ControlNet, but {where} "
        f"{label(model_family)}: load a ControlNet made for {label(model_family)} "
        f"(e.g. {EXAMPLES.get(model_family, 'one of its family')})"
    )


@dataclass(frozen=True, eq=False)
class DitControlNetUnit:
    """What one Apply ControlNet node chose for a transformer ControlNet."""

    control_net: Any  # ControlNetBundle of family SD3 or FLUX
    image: torch.Tensor  # IMAGE [B, H, W, C], 0..1
    vae: Any = None  # VAEBundle: encodes the hint (None only for XLabs-style Flux ControlNets)
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mask: Optional[torch.Tensor] = None
    control_mode: int = -1


def takes_pixels(module) -> bool:
    """XLabs-style Flux ControlNets embed the pixel hint themselves (input_hint_block)."""
    return getattr(module, "input_hint_block", None) is not None


def union_modes(module) -> Optional[int]:
    """How many modes a Union ControlNet has (None: not a Union ControlNet)."""
    return getattr(module.config, "num_mode", None)


def check_unit(unit: DitControlNetUnit) -> None:
    """Name the input, the value and the fix, before anything runs."""
    from .controlnet import ControlNetUnit, check_unit as check_common

    check_common(ControlNetUnit(unit.control_net, unit.image, unit.strength, unit.start, unit.end, unit.mask))
    cn = unit.control_net
    if unit.vae is None and not takes_pixels(cn.module):
        raise ValueError(
            f"vae: none connected, but control_net {cn.name!r} is {a_label(cn.family)} ControlNet, which "
            "takes the hint as VAE latents: connect the VAE output of Load Diffusers Model to Apply "
            "Diffusers ControlNet's vae input"
        )
    if unit.vae is not None and getattr(unit.vae, "family", cn.family) != cn.family:
        raise ValueError(
            f"vae: {unit.vae.name!r} is the {label(unit.vae.family)} VAE, but control_net {cn.name!r} is an "
            f"{label(cn.family)} ControlNet: connect the VAE of the {label(cn.family)} checkpoint"
        )
    modes = union_modes(cn.module)
    mode = unit.control_mode
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise ValueError(f"control_mode must be a whole number (-1 for none), got {mode!r}")
    if modes is None and mode != -1:
        raise ValueError(
            f"control_mode is {mode}, but control_net {cn.name!r} is not a Union ControlNet (it has no "
            "modes): set control_mode to -1"
        )
    if modes is not None and not 0 <= mode < modes:
        raise ValueError(
            f"control_mode is {mode}, but control_net {cn.name!r} is a Union ControlNet with {modes} modes: "
            f"choose the mode of the hint, 0 to {modes - 1} (see the ControlNet's model card, e.g. "
            "InstantX Union: 0 canny, 1 tile, 2 depth, 3 blur, 4 pose, 5 gray, 6 low quality)"
        )


def check_compatible(control_net, model) -> None:
    """Refuse a ControlNet of another family or width before any shape error."""
    if control_net.family != model.family:
        raise wrong_family(control_net, model.family, f"the model {model.name!r} is")
    cn, tr = control_net.module.config, model.denoiser.config
    problems = []
    cn_width = int(cn.num_attention_heads) * int(cn.attention_head_dim)
    tr_width = int(tr.num_attention_heads) * int(tr.attention_head_dim)
    if cn_width != tr_width:
        problems.append(f"width {cn_width} vs {tr_width}")
    if int(cn.in_channels) != int(tr.in_channels):
        problems.append(f"in_channels {cn.in_channels} vs {tr.in_channels}")
    joint = getattr(cn, "joint_attention_dim", None)
    if joint is not None and int(joint) != int(tr.joint_attention_dim):
        problems.append(f"joint_attention_dim {joint} vs {tr.joint_attention_dim}")
    if problems:
        raise ValueError(
            f"control_net {control_net.name!r} does not fit the model {model.name!r} ({'; '.join(problems)}): "
            "it was made for another base model of the family; load one made for this model"
        )


def hint_pixels(image: torch.Tensor, pixel_size: tuple[int, int]) -> torch.Tensor:
    """IMAGE [B,H,W,C] (0..1) -> IMAGE [B,H',W',3] at the generated size (RGB, alpha dropped)."""
    hint = image.detach().to(torch.float32)
    if hint.shape[-1] == 1:
        hint = hint.repeat(1, 1, 1, 3)
    hint = hint[..., :3]
    size = tuple(int(v) for v in pixel_size)
    if tuple(hint.shape[1:3]) != size:
        hint = F.interpolate(hint.movedim(-1, 1), size=size, mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1).movedim(1, -1)
    return hint


class DitControlNetHook(hooks.SamplingHook):
    """One transformer ControlNet unit in the sampling loop (see the module docstring)."""

    order = 0
    serves_families = DIT_FAMILIES  # FlowFamily.check_conditioning lets these extras through

    def __init__(self, unit: DitControlNetUnit, load_modules: Optional[Callable[[list], None]] = None):
        check_unit(unit)
        self.unit = unit
        self.load_modules = load_modules
        self._drawn = None
        self._run = None

    def modules(self) -> list:
        vae = [self.unit.vae.vae] if self.unit.vae is not None else []
        return [self.unit.control_net.module, *vae]

    # ----------------------------------------------------------- the hint

    def draw(self, model, batch: int, pixel_size: tuple, generators: list) -> None:
        """The hint latents, drawn where the pipeline draws them: before the starting noise."""
        unit, cn = self.unit, self.unit.control_net
        check_compatible(cn, model)
        if self.load_modules is not None:
            self.load_modules(self.modules())
        pixels = per_sample(hint_pixels(unit.image, pixel_size), batch, "hint image")
        if takes_pixels(cn.module):  # XLabs: normalised pixels, embedded by the ControlNet
            self._drawn = pixels.movedim(-1, 1) * 2.0 - 1.0
            return
        mean, std = vae_codec.encode(unit.vae, pixels, with_std=True, affine=cn.hint_affine)
        if cn.family == FLUX:  # retrieve_latents(..., generator): mean + std * eps, per sample
            latents = posterior.sample(posterior.Posterior(mean, std), int(mean.shape[0]), generators)
            shift = unit.vae.shift_factor
        else:  # SD3: the pipeline's global-RNG draw is not reproducible by a seed; take the mean
            latents = mean
            shift = 0.0 if cn.module.config.force_zeros_for_pooled_projection else unit.vae.shift_factor
        latents = (latents - shift) * unit.vae.scaling_factor
        if cn.family == FLUX:
            from .families.flux import pack

            latents = pack(latents)
        self._drawn = latents

    # ----------------------------------------------------------- lifecycle

    def begin(self, run: hooks.RunContext, role: str) -> None:
        cn = self.unit.control_net
        check_compatible(cn, run.model)
        if self._drawn is None:  # a caller that skips draw: take it now
            self.draw(run.model, run.batch, run.pixel_size, [torch.Generator().manual_seed(0)] * run.batch)
        module = cn.module
        try:
            device = next(module.parameters()).device
        except StopIteration:
            device = run.device
        state = {"device": device, "dtype": cn.dtype, "hint": self._drawn.to(device=device, dtype=cn.dtype),
                 "skip": self.unit.strength == 0.0, "pos_embed": False}
        self._drawn = None
        if cn.family == SD3 and getattr(module.config, "use_pos_embed", True) is False and module.pos_embed is None:
            # SD3.5 large ControlNets share the transformer's position embedding (the
            # pipeline sets it at construction); lent for this run only.
            module.pos_embed = module._get_pos_embed_from_transformer(run.model.denoiser).to(device=device,
                                                                                             dtype=cn.dtype)
            state["pos_embed"] = True
        mask = self.unit.mask
        if mask is not None:
            mask = mask.detach().to(torch.float32)
            mask = per_sample(mask[None] if mask.ndim == 2 else mask, run.batch, "mask")
            if float(mask.max()) <= 0.0:
                logger.warning("ControlNet %r: its mask is empty (all zero), so it does nothing", cn.name)
                state["skip"] = True
            elif float(mask.min()) < 1.0:
                patch = 2 if cn.family == FLUX else int(getattr(run.model.denoiser.config, "patch_size", 1) or 1)
                grid = (run.latent_size[0] // patch, run.latent_size[1] // patch)
                tokens = F.interpolate(mask[:, None], size=grid, mode="bilinear", antialias=True, align_corners=False)
                state["mask"] = tokens.flatten(1)[..., None]  # [B, tokens, 1]
        self._run = state

    def end(self) -> None:
        if self._run is not None and self._run.get("pos_embed"):
            self.unit.control_net.module.pos_embed = None
        self._run = None
        self._drawn = None

    # ------------------------------------------------------------ the step

    def before_unet(self, step: hooks.StepContext, run: hooks.RunContext, role: str) -> None:
        from .controlnet import step_keep

        state = self._run
        keep = step_keep(state, self.unit, step, run)
        if keep == 0.0:
            return
        cn = self.unit.control_net
        rows_total = int(step.x_in.shape[0])
        roles = list(step.row_roles) if len(step.row_roles) == rows_total else [hooks.POSITIVE] * rows_total
        targets = [k for k, r in enumerate(roles) if role == hooks.BOTH or r == role]
        if not targets:
            return
        if cn.family == FLUX and role == hooks.BOTH:
            # FluxControlNetPipeline: the ControlNet sees the positive prompt; both passes get its residuals.
            sources = [k for k in targets if roles[k] == hooks.POSITIVE]
        else:
            sources = targets
        device, dtype = state["device"], state["dtype"]
        index = torch.tensor(sources, device=step.x_in.device)

        def pick(t):
            return None if t is None else t.index_select(0, index.to(t.device)).to(device=device, dtype=dtype)

        sample_index = index.cpu() % run.batch
        hint = state["hint"][sample_index.to(state["hint"].device)]
        scale = float(self.unit.strength) * keep
        if cn.family == FLUX:
            down, single = self._flux(step, run, pick, hint, scale, len(sources))
            outputs = {"controlnet_block_samples": down, "controlnet_single_block_samples": single}
        else:
            outputs = {"block_controlnet_hidden_states": self._sd3(step, pick, hint, scale)}
        out_device, out_dtype = step.x_in.device, step.x_in.dtype
        position = {k: j for j, k in enumerate(sources)}
        # each target row takes the residual of its source row (same row, or the same sample's positive row)
        take = []
        for k in targets:
            j = position.get(k)
            if j is None:
                j = next(j for j, s in enumerate(sources) if s % run.batch == k % run.batch)
            take.append(j)
        take_t = torch.tensor(take, device=out_device)
        target_t = torch.tensor(targets, device=out_device)
        for key, samples in outputs.items():
            if samples is None:
                continue
            full = []
            for r in samples:
                r = r.to(device=out_device, dtype=out_dtype).index_select(0, take_t)
                if "mask" in state:
                    r = r * state["mask"].to(device=out_device, dtype=out_dtype)[target_t.cpu() % run.batch]
                z = r.new_zeros((rows_total, *r.shape[1:]))
                z[target_t] = r
                full.append(z)
            step.add_block_residuals(key, full)
        if cn.family == FLUX:
            repeat = takes_pixels(cn.module)
            if step.block_residuals.get("controlnet_blocks_repeat", repeat) != repeat:
                raise ValueError(
                    "chained Flux ControlNets mix XLabs-style (pixel hint) and InstantX-style (latent hint) "
                    "models, which the transformer takes differently: chain ControlNets of one kind"
                )
            step.block_residuals["controlnet_blocks_repeat"] = repeat

    def _flux(self, step, run, pick, hint, scale, rows):
        from .families.flux import latent_image_ids, pack

        module = self.unit.control_net.module
        x = step.x_in
        h, w = int(x.shape[-2]), int(x.shape[-1])
        guidance = None
        if bool(getattr(module.config, "guidance_embeds", False)):
            g = pick(step.timestep_cond) if step.timestep_cond is not None else None
            guidance = g.float() if g is not None else torch.full((rows,), 3.5, device=hint.device)
        mode = None
        if union_modes(module) is not None:
            mode = torch.full((rows, 1), int(self.unit.control_mode), dtype=torch.long, device=hint.device)
        tokens = pick(pack(x))
        dtype = tokens.dtype
        down, single = module(
            hidden_states=tokens,
            controlnet_cond=hint,
            controlnet_mode=mode,
            conditioning_scale=scale,
            timestep=step.timestep.expand(rows).to(device=tokens.device, dtype=dtype) / 1000,
            guidance=guidance,
            pooled_projections=pick(step.added_cond_kwargs["pooled_projections"]),
            encoder_hidden_states=pick(step.encoder_hidden_states),
            txt_ids=step.added_cond_kwargs["txt_ids"].to(device=tokens.device, dtype=dtype),
            img_ids=latent_image_ids(h // 2, w // 2, tokens.device, dtype),
            return_dict=False,
        )
        return down, single

    def _sd3(self, step, pick, hint, scale):
        module = self.unit.control_net.module
        pooled = pick(step.added_cond_kwargs["pooled_projections"])
        if module.config.force_zeros_for_pooled_projection:  # InstantX SD3 ControlNets
            pooled = torch.zeros_like(pooled)
        embeds = pick(step.encoder_hidden_states) if module.config.joint_attention_dim is not None else None
        x = pick(step.x_in)
        return module(
            hidden_states=x,
            controlnet_cond=hint,
            conditioning_scale=scale,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            timestep=step.timestep.expand(x.shape[0]).to(x.device),
            return_dict=False,
        )[0]


def apply(
    positive: Conditioning,
    negative: Optional[Conditioning],
    unit: DitControlNetUnit,
    load_modules: Optional[Callable[[list], None]] = None,
) -> tuple[Conditioning, Optional[Conditioning]]:
    """New (positive, negative) carrying one transformer ControlNet unit; the inputs are untouched."""
    if positive.family != unit.control_net.family:
        raise wrong_family(unit.control_net, positive.family, "positive was encoded for")
    hook = DitControlNetHook(unit, load_modules)  # checks the unit
    if unit.strength == 0.0:
        return positive, negative
    return positive.with_extra(hook), (negative.with_extra(hook) if negative is not None else None)
