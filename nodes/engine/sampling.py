"""The denoising loop: diffusers' StableDiffusion[XL] / Img2Img loop, written once.

One function covers text-to-image, image-to-image (denoise < 1) and partial
runs (start_step / end_step, for refiners and hires passes, as ComfyUI's
KSamplerAdvanced). Each branch does what the matching diffusers pipeline
does, in the same order and with the same random draws, so that with the same
components, seed, scheduler, steps and guidance the result equals the
pipeline's (the unit tests check this to 1e-4).

The engine keeps no state between calls and never mutates the model: the
scheduler is built fresh for every run from the checkpoint's configuration,
and the UNet is only called. LATENT values come in and go out unscaled
(ComfyUI's convention); the loop works in the UNet's scaled space.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import families
from . import hooks as hooks_mod
from . import posterior
from .components import Conditioning, ModelBundle, model_kind_label
from .noise import generators_for, initial_noise, seed_plan

logger = logging.getLogger(__name__)

OnStep = Callable[[int, int, torch.Tensor], None]


# --------------------------------------------------------------------------
# input checks (diffusers' check_inputs style: name the input, value and fix)
# --------------------------------------------------------------------------


def _model_label(model: ModelBundle) -> str:
    return f"DS model {model.name!r} ({families.of(model).log_name})"


def _check_latent(model: ModelBundle, latent: dict) -> torch.Tensor:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("latent_image must be a LATENT: a dict with a 'samples' tensor")
    samples = latent["samples"]
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(
            f"latent_image samples must be a [batch, channels, height, width] tensor, got {shape}"
        )
    families.of(model).check_latent(model, latent, samples, _model_label(model))
    return samples


def _check_conditioning(model: ModelBundle, cond: Conditioning, which: str) -> None:
    if cond.family != model.family:
        raise ValueError(
            f"{which} conditioning was encoded for {cond.family}, but {_model_label(model)} "
            f"is {model.family}: encode the prompt with the text encoder of the same checkpoint"
        )
    cond_variant, model_variant = cond.variant, model.variant
    if cond_variant != model_variant and cond_variant not in families.of(model).shared_text_variants:
        raise ValueError(
            f"{which} conditioning was encoded with the {model_kind_label(cond.family, cond_variant)} text "
            f"encoder, but {_model_label(model)} is the {model_kind_label(model.family, model_variant)}: "
            "the base and the refiner encode prompts differently; encode the prompt again with the "
            "TEXT_ENCODER output of the same Load Diffusers Model as this sampler's model"
        )
    families.of(model).check_conditioning(model, cond, which, _model_label(model))


def _check_numbers(steps: int, denoise: float, start_step: int, end_step: Optional[int]) -> None:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps}")
    if not 0.0 <= denoise <= 1.0:
        raise ValueError(
            f"denoise must be between 0 and 1, got {denoise}: 1 repaints everything, "
            "lower values keep more of the input latent"
        )
    if start_step < 0:
        raise ValueError(f"start_step must be 0 or more, got {start_step}")
    if end_step is not None and start_step >= end_step:
        raise ValueError(
            f"start_step ({start_step}) must be lower than end_step ({end_step}): "
            "the run covers the steps from start_step up to, not including, end_step"
        )
    if start_step >= steps:
        raise ValueError(
            f"start_step ({start_step}) must be lower than steps ({steps}): there is nothing "
            "left to denoise; lower start_step or raise steps"
        )
    if start_step > 0 and denoise < 1.0:
        raise ValueError(
            f"denoise ({denoise}) and start_step ({start_step}) both skip the start of the "
            "schedule: set denoise to 1.0 when continuing a partial run with start_step"
        )


# --------------------------------------------------------------------------
# preparation
# --------------------------------------------------------------------------


def _step_kwargs(scheduler, generators: list[torch.Generator], eta: float = 0.0) -> dict:
    """diffusers' prepare_extra_step_kwargs: eta and generator when step takes them."""
    params = set(inspect.signature(scheduler.step).parameters)
    out = {}
    if "eta" in params:
        out["eta"] = eta
    if "generator" in params:
        out["generator"] = generators
    return out


def _prepare_mask(mask: torch.Tensor, batch: int, size: tuple[int, int], device, dtype) -> torch.Tensor:
    """ComfyUI's noise_mask at latent size: [B,1,h,w], 1 = repaint, 0 = keep.

    Resized bilinearly as ComfyUI does; a mask already at latent size passes
    through unchanged (so callers wanting diffusers' binarised nearest-neighbour
    mask can prepare it themselves).
    """
    m = mask.to(dtype=torch.float32)
    m = m.reshape(-1, 1, m.shape[-2], m.shape[-1])
    if tuple(m.shape[-2:]) != size:
        m = F.interpolate(m, size=size, mode="bilinear")
    if m.shape[0] != batch:
        if batch % m.shape[0] != 0:
            raise ValueError(
                f"latent noise_mask has batch {m.shape[0]}, which does not divide the latent batch {batch}: "
                "use one mask or one per sample"
            )
        m = m.repeat(batch // m.shape[0], 1, 1, 1)
    return m.to(device=device, dtype=dtype)


@dataclass
class _Plan:
    """Which part of the schedule a run covers, and how it starts."""

    full: torch.Tensor  # the whole schedule for `steps`
    timesteps: torch.Tensor  # the part this run covers
    first_index: int  # index of timesteps[0] in full
    order: int
    total: int  # steps in this run (UNet calls / order)
    is_txt2img: bool


def _plan(scheduler, steps, denoise, start_step, end_step, samples, device, has_mask=False,
          family=None) -> Optional[_Plan]:
    """Set the scheduler's timesteps and pick this run's slice of them.

    denoise < 1 keeps the last int(steps * denoise) steps (diffusers'
    get_timesteps, including its rounding down); start_step/end_step cut the
    full schedule as KSamplerAdvanced does. None when nothing is left to run.
    """
    scheduler.set_timesteps(steps, device=device)
    order = int(getattr(scheduler, "order", 1))
    full = scheduler.timesteps
    end = steps if end_step is None else min(int(end_step), steps)
    if family is None:
        init_timestep = min(int(steps * denoise), steps)
        t_start = max(steps - init_timestep, 0)
    else:
        t_start = family.img2img_start(steps, denoise)
    begin = max(int(start_step), t_start)
    if begin >= end:
        logger.warning(
            "denoise %s of %s steps rounds down to no step at all: returning the input unchanged "
            "(raise steps or denoise)", denoise, steps,
        )
        return None
    # A run to the end takes the schedule's tail as is: PLMS's schedule has
    # one more timestep than steps (diffusers runs them all).
    timesteps = full[begin * order :] if end == steps else full[begin * order : end * order]
    # Pure noise start: an empty latent (text-to-image), or a masked latent at
    # full strength (diffusers' inpaint pipelines' is_strength_max), so
    # nothing of the original inside the mask leaks into the result.
    is_txt2img = start_step == 0 and denoise == 1.0 and (has_mask or not bool(samples.any()))
    if not is_txt2img and hasattr(scheduler, "set_begin_index"):
        # Img2img and continued runs start mid-schedule (diffusers does this in
        # get_timesteps); txt2img leaves it unset, exactly as its pipeline does.
        scheduler.set_begin_index(begin * order)
    return _Plan(full, timesteps, begin * order, order, end - begin, is_txt2img)


def _unet_device(unet) -> torch.device:
    try:
        return next(unet.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device(getattr(unet, "device", "cpu"))


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------


@torch.no_grad()
def sample(
    model: ModelBundle,
    positive: Conditioning,
    negative: Optional[Conditioning],
    latent: dict,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    schedule: str = "normal",
    denoise: float = 1.0,
    start_step: int = 0,
    end_step: Optional[int] = None,
    variation_seed: int = 0,
    variation_strength: float = 0.0,
    batch_seed_mode: str = "increment",
    device=None,
    on_step: Optional[OnStep] = None,
    should_stop: Optional[Callable[[], None]] = None,
) -> dict:
    """Denoise `latent` with `model`, guided by `positive` / `negative`.

    Returns a new LATENT dict (other keys copied) whose "samples" are unscaled,
    float32, on the CPU.

    - Text-to-image when the input is all zeros, denoise is 1 and start_step 0:
      latents = noise * init_noise_sigma (StableDiffusionPipeline); also for
      a masked latent at denoise 1 (the inpaint pipelines' full strength).
    - Otherwise image-to-image (StableDiffusionImg2ImgPipeline): the last
      int(steps * denoise) steps of the schedule, starting from the input
      noised to the first of them. denoise 0 returns the input untouched.
    - start_step / end_step run only steps [start_step, end_step) of the full
      schedule. start_step > 0 adds no noise (the input carries the leftover
      noise of an earlier partial run); end_step < steps returns the
      latents with their leftover noise, for the next pass.
    - Seeds: sample i uses seed + i ("increment", or + batch_index[i] when the
      latent has ComfyUI's batch_index) or seed ("fixed"), one CPU generator
      each; variation_seed / variation_strength mix in a second noise the A1111
      way (see noise.py).
    - `should_stop()` is called before every UNet evaluation and cancels the
      run by raising; `on_step(i, total, x0)` is called after each of the
      `total` steps with the predicted clean latents (scaled UNet space) when
      the scheduler gives them, else the current latents, for previews.
    - A latent from Diffusers VAE Encode / Inpaint with latent_sampling
      "sample" carries its VAE posterior: the image latents are drawn from it
      with the seeds right before the noise (and an inpaint masked image's
      right after), as diffusers' pipelines do (posterior.py). The result
      carries no posterior.
    - A "noise_mask" in the latent (1 = repaint) keeps the unmasked area at
      the input, re-noised to each step's level (diffusers' inpaint pipeline
      for 4-channel UNets).
    - What a family conditions on besides the text (SDXL's sizes, the
      refiner's aesthetic score) travels on the prompts, not here: the loop
      takes what every model uses (see families/).
    """
    samples = _check_latent(model, latent)
    _check_conditioning(model, positive, "positive")
    if negative is not None:
        _check_conditioning(model, negative, "negative")
    _check_numbers(steps, denoise, start_step, end_step)
    steps = int(steps)
    family = families.of(model)
    scheduler = family.make_scheduler(model, sampler_name, schedule, tuple(samples.shape[-2:]))
    batch = int(samples.shape[0])
    seeds, variation_seeds = seed_plan(
        seed, batch, batch_seed_mode, latent.get("batch_index"), variation_seed, variation_strength
    )

    if denoise == 0.0:
        logger.info("denoise is 0: returning the input latent unchanged")
        return posterior.without_posteriors(latent)

    device = torch.device(device) if device is not None else _unet_device(model.denoiser)
    dtype = model.dtype

    repaints = "noise_mask" in latent or any(getattr(h, "repaints", False) for h in latent.get("ds_hooks", ()) or ())
    plan = _plan(scheduler, steps, denoise, start_step, end_step, samples, device, repaints, family)
    if plan is None:
        return posterior.without_posteriors(latent)
    timesteps, full, order, total = plan.timesteps, plan.full, plan.order, plan.total
    if plan.is_txt2img and family.from_noise_warning():
        # Allowed, as in diffusers, but rarely what was meant.
        logger.warning(family.from_noise_warning(), _model_label(model))
    logger.debug(
        "sampling %s of %s steps with %s/%s, cfg %s, %s", total, steps, sampler_name, schedule, cfg,
        "txt2img" if plan.is_txt2img else "img2img/continue",
    )

    # ---- starting latents (same draws as diffusers' prepare_latents)
    h, w = int(samples.shape[-2]), int(samples.shape[-1])
    shape = (batch, int(samples.shape[1]), h, w)
    generators = generators_for(seeds)
    variation_generators = generators_for(variation_seeds) if variation_seeds else None
    mask = latent.get("noise_mask")
    bound = hooks_mod.collect(model, positive, negative, latent)
    pixel_size = (h * model.vae_scale_factor, w * model.vae_scale_factor)
    for b in bound:  # e.g. FluxControlNetPipeline encodes its hint with the generator before the latents
        b.hook.draw(model, batch, pixel_size, generators)
    hooks_draw_image = any(getattr(h, "draws_image", False) for h in latent.get("ds_hooks", ()) or ())
    if not plan.is_txt2img or mask is not None or hooks_draw_image:
        # The pipelines sample the VAE posterior with the seed before the
        # noise whenever they use the image latents (posterior.py); FluxFill
        # encodes the image even at strength 1.
        drawn = posterior.image_draw(latent, generators)
        if drawn is not None:
            samples = drawn
    init_latents = family.to_model_space(model, samples, device, dtype)
    noise = None
    if start_step == 0 or mask is not None:
        noise = initial_noise(
            shape, generators, device=device, dtype=dtype,
            variation_generators=variation_generators, variation_strength=variation_strength,
        )
    # prepare_mask_latents: the masked image's posterior, after the noise.
    masked_deviation = posterior.masked_image_deviation(latent, generators)
    if plan.is_txt2img:
        latents = noise * scheduler.init_noise_sigma
    elif start_step == 0:
        latents = scheduler.add_noise(init_latents, noise, timesteps[:1].repeat(batch))
    else:
        latents = init_latents
    if mask is not None:
        mask = _prepare_mask(mask, batch, (h, w), device, dtype)

    if hasattr(scheduler, "noise_sampler_seed"):
        # DPM++ SDE's Brownian tree draws from its own seed (random when
        # unset); one seed per sample makes it reproducible, as in A1111.
        scheduler.noise_sampler_seed = list(seeds)

    inputs = family.denoiser_inputs(
        model, positive, negative, cfg, batch, pixel_size, device, model_label=_model_label(model),
    )
    extra = _step_kwargs(scheduler, generators)
    warmup = len(timesteps) - total * order
    reported = 0
    run = hooks_mod.RunContext(
        model=model, batch=batch, do_cfg=inputs.do_cfg, device=device, dtype=dtype, latent_size=(h, w),
        pixel_size=pixel_size, timesteps=timesteps, total_steps=len(full), first_index=plan.first_index,
        scheduler=scheduler, cfg=cfg, encoder_hidden_states=inputs.embeds,
        added_cond_kwargs=inputs.added_cond_kwargs, steps=steps, start_step=int(start_step),
        masked_image_deviation=masked_deviation,
    )
    begun = []
    try:
        for b in bound:
            b.hook.begin(run, b.role)
            begun.append(b)
        for i, t in enumerate(timesteps):
            if should_stop is not None:
                should_stop()
            x_in = torch.cat([latents] * 2) if inputs.do_cfg else latents
            x_in = scheduler.scale_model_input(x_in, t)
            step = hooks_mod.StepContext(
                index=i, timestep=t, progress=(plan.first_index + i) / max(len(full), 1), latents=latents,
                x_in=x_in, encoder_hidden_states=inputs.embeds,
                added_cond_kwargs=dict(inputs.added_cond_kwargs) if inputs.added_cond_kwargs else None,
                row_roles=([hooks_mod.NEGATIVE] * batch if inputs.do_cfg else []) + [hooks_mod.POSITIVE] * batch,
                timestep_cond=inputs.timestep_cond,
            )
            for b in bound:
                b.hook.before_unet(step, run, b.role)
            noise_pred = family.predict(model, step)
            for b in reversed(bound):
                noise_pred = b.hook.after_unet(noise_pred, step, run, b.role)
            if inputs.do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + cfg * (cond - uncond)

            out = scheduler.step(noise_pred, t, latents, **extra, return_dict=True)
            latents = out.prev_sample
            if latents.dtype != dtype:
                latents = latents.to(dtype)

            if mask is not None:
                latents = _blend_masked(scheduler, latents, init_latents, noise, mask, full, plan.first_index + i)
            for b in bound:
                latents = b.hook.after_step(latents, step, run, b.role)

            if i == len(timesteps) - 1 or ((i + 1) > warmup and (i + 1) % order == 0):
                if on_step is not None:
                    x0 = getattr(out, "pred_original_sample", None)
                    on_step(reported, total, x0 if x0 is not None else latents)
                reported += 1
    finally:
        # Restore in reverse order, even on Cancel: cached modules must come
        # out of a run exactly as they went in.
        for b in reversed(begun):
            b.hook.end()

    result = posterior.without_posteriors(latent)
    result["samples"] = family.from_model_space(model, latents)
    return result


def _blend_masked(scheduler, latents, init_latents, noise, mask, full, index) -> torch.Tensor:
    """Keep the unmasked area at the input, noised to the next step's level.

    diffusers' inpaint pipeline (4-channel UNet branch); the next timestep is
    taken from the full schedule so that a partial run (end_step) hands on
    latents whose kept area carries the same leftover noise as the rest.
    """
    proper = init_latents
    if index < len(full) - 1:
        proper = scheduler.add_noise(init_latents, noise, full[index + 1 : index + 2])
    return (1 - mask) * proper + mask * latents
