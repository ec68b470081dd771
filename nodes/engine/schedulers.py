"""Sampler names (A1111's words) mapped onto diffusers schedulers.

People arrive with A1111's vocabulary ("DPM++ 2M", schedule "Karras"), and
the A1111-compatible HTTP API receives exactly those strings, so the pack
names samplers the A1111 way and maps each one to the diffusers scheduler that
the diffusers documentation lists as its equivalent.  The sampler (the solver)
and the schedule (how the noise levels are spaced) are two separate choices,
as in A1111 1.9+ and ComfyUI; the old combined names ("DPM++ 2M Karras") are
understood by `split_a1111_name`.

`make_scheduler` always builds a fresh instance from the checkpoint's own
scheduler configuration (its betas, prediction type, timestep spacing...), so
a run never mutates the model's scheduler and a test can hand the identical
scheduler to a diffusers pipeline for parity checks.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field

import diffusers
from diffusers.utils import is_scipy_available

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: the diffusers class and the config values that make it so.

    `overrides` are the settings that distinguish this sampler from its
    siblings on the same class (e.g. the SDE variant of DPM-Solver++); every
    other setting comes from the checkpoint's scheduler configuration.
    `unsupported_schedules` lists schedules the class accepts as config but
    ignores or mishandles, so that asking for them fails clearly instead of
    silently doing something else.
    """

    cls_name: str
    overrides: dict = field(default_factory=dict)
    unsupported_schedules: tuple = ()
    note: str = ""


# The A1111 <-> diffusers table from diffusers' scheduler documentation, plus
# the cheap extras diffusers offers (DEIS, the other DPM-Solver++ variants).
_SAMPLERS: dict[str, SamplerSpec] = {
    "Euler": SamplerSpec("EulerDiscreteScheduler"),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "Heun": SamplerSpec("HeunDiscreteScheduler"),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler"),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler"),
    "DPM++ 2M": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
    ),
    "DPM++ 2M SDE": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
    ),
    "DPM++ 2M SDE Heun": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
    ),
    "DPM++ 3M SDE": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "midpoint"},
    ),
    "DPM++ SDE": SamplerSpec("DPMSolverSDEScheduler"),
    # diffusers has no ancestral single-step DPM-Solver++; its documentation
    # calls the single-step scheduler "very similar". The stochastic (SDE)
    # single-step 2nd-order solver is the closest fit: same family, noise
    # injected every step. Not numerically A1111's sampler.
    "DPM++ 2S a": SamplerSpec(
        "DPMSolverSinglestepScheduler",
        # lower_order_final: diffusers forces it on anyway (with a warning)
        # whenever the last sigma is zero, which is the default.
        {
            "algorithm_type": "sde-dpmsolver++",
            "solver_order": 2,
            "solver_type": "midpoint",
            "lower_order_final": True,
        },
        note="closest diffusers equivalent (SDE single-step), not A1111's ancestral 2S",
    ),
    # A1111's DDIM never clips x0; DDIMScheduler defaults to clipping when the
    # checkpoint's config came from another scheduler class and lacks the key.
    "DDIM": SamplerSpec("DDIMScheduler", {"clip_sample": False}),
    # A1111 calls diffusers' PNDM (with the PRK warm-up skipped) "PLMS".
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}),
    "LMS": SamplerSpec("LMSDiscreteScheduler"),
    "UniPC": SamplerSpec("UniPCMultistepScheduler"),
    # LCM picks its own timesteps from a 50-step skeleton and ignores
    # timestep_spacing, so "SGM Uniform" would silently be "normal".
    "LCM": SamplerSpec("LCMScheduler", unsupported_schedules=("sgm_uniform",)),
    "DEIS": SamplerSpec("DEISMultistepScheduler"),
}

SAMPLER_NAMES: list[str] = list(_SAMPLERS)

# Other spellings people send (older A1111 / diffusers' own class name).
SAMPLER_ALIASES: dict[str, str] = {"PNDM": "PLMS"}

NORMAL = "normal"
SCHEDULE_TYPES: list[str] = [NORMAL, "karras", "exponential", "beta", "sgm_uniform"]

# A1111's "Schedule type" labels -> ours ("Automatic"/"Uniform" are each
# sampler's default spacing, which is what "normal" means here).
A1111_SCHEDULE_LABELS: dict[str, str] = {
    "Automatic": NORMAL,
    "Uniform": NORMAL,
    "Karras": "karras",
    "Exponential": "exponential",
    "Beta": "beta",
    "SGM Uniform": "sgm_uniform",
}

# Schedule -> the boolean config flag that selects it.
_SIGMA_FLAGS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}


def _scheduler_class(spec: SamplerSpec):
    return getattr(diffusers, spec.cls_name)


def _init_params(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def canonical_sampler_name(sampler_name: str) -> str:
    """The canonical name for `sampler_name`; ValueError listing the valid ones."""
    name = SAMPLER_ALIASES.get(sampler_name, sampler_name)
    if name not in _SAMPLERS:
        raise ValueError(
            f"sampler_name {sampler_name!r} is not a known sampler: choose one of "
            f"{', '.join(SAMPLER_NAMES)}"
        )
    return name


def supported_schedules(sampler_name: str) -> list[str]:
    """The schedule types `sampler_name`'s scheduler can actually apply."""
    spec = _SAMPLERS[canonical_sampler_name(sampler_name)]
    params = _init_params(_scheduler_class(spec))
    out = [NORMAL]
    for schedule in SCHEDULE_TYPES[1:]:
        if schedule in spec.unsupported_schedules:
            continue
        if schedule == "sgm_uniform":
            ok = "timestep_spacing" in params
        else:
            ok = _SIGMA_FLAGS[schedule] in params
            if schedule == "beta":
                ok = ok and is_scipy_available()  # diffusers needs scipy for it
        if ok:
            out.append(schedule)
    return out


def _schedule_overrides(schedule: str, params: set[str]) -> dict:
    """Config values for `schedule`: exactly one sigma flag on, the others off.

    "normal" turns every flag off explicitly, so a checkpoint whose config
    ships `use_karras_sigmas=True` still gets the scheduler's plain spacing
    when the user asks for "normal" (and diffusers refuses two flags at once).
    """
    out = {flag: False for flag in _SIGMA_FLAGS.values() if flag in params}
    if "use_lu_lambdas" in params:
        out["use_lu_lambdas"] = False
    if schedule in _SIGMA_FLAGS:
        out[_SIGMA_FLAGS[schedule]] = True
    elif schedule == "sgm_uniform":
        # diffusers' documentation: SGM Uniform == timestep_spacing="trailing".
        out["timestep_spacing"] = "trailing"
    return out


def make_scheduler(scheduler_config: dict, sampler_name: str, schedule: str = NORMAL):
    """A fresh diffusers scheduler for `sampler_name` with `schedule` spacing.

    Built with `Cls.from_config(scheduler_config, **overrides)`: the
    checkpoint's config (betas, prediction type, spacing, offset) is kept and
    only the values that define the sampler and the schedule are set.
    Raises ValueError for an unknown sampler (listing the valid names) or a
    schedule the sampler does not support (listing the ones it does).
    """
    name = canonical_sampler_name(sampler_name)
    if schedule not in SCHEDULE_TYPES:
        raise ValueError(
            f"schedule {schedule!r} is not a known schedule type: choose one of "
            f"{', '.join(SCHEDULE_TYPES)}"
        )
    supported = supported_schedules(name)
    if schedule not in supported:
        raise ValueError(
            f"sampler {name!r} does not support the {schedule!r} schedule: "
            f"it supports {', '.join(supported)}; pick one of those or another sampler"
        )
    spec = _SAMPLERS[name]
    cls = _scheduler_class(spec)
    params = _init_params(cls)
    overrides = {k: v for k, v in spec.overrides.items() if k in params}
    overrides.update(_schedule_overrides(schedule, params))
    config = {k: v for k, v in dict(scheduler_config).items() if k not in overrides}
    return cls.from_config(config, **overrides)


def split_a1111_name(name: str) -> tuple[str, str | None]:
    """Split A1111's pre-1.9 combined names: "DPM++ 2M Karras" -> ("DPM++ 2M", "karras").

    Returns (sampler, schedule) with schedule None when the name carries none.
    The sampler part is returned as given (validate it with make_scheduler).
    """
    for suffix, schedule in ((" Karras", "karras"), (" Exponential", "exponential")):
        if name.endswith(suffix) and canonical_name_or_none(name[: -len(suffix)]):
            return name[: -len(suffix)], schedule
    return name, None


def canonical_name_or_none(sampler_name: str) -> str | None:
    """Like canonical_sampler_name, but None instead of raising."""
    name = SAMPLER_ALIASES.get(sampler_name, sampler_name)
    return name if name in _SAMPLERS else None


def sampler_note(sampler_name: str) -> str:
    """A caveat about how closely the sampler matches A1111's ("" when exact)."""
    return _SAMPLERS[canonical_sampler_name(sampler_name)].note
