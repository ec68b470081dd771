"""Sampler names and schedule types -> diffusers schedulers."""
from __future__ import annotations

import pytest
import torch

from diffusers_studio.nodes.engine import schedulers as S
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle
from diffusers_studio.nodes.engine.sampling import sample

# torchsde warns when diffusers' DPM++ SDE queries its Brownian tree a float
# rounding below the tree's start (k-diffusion and ComfyUI do the same); harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning")

A1111_CORE = [
    "Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE",
    "DDIM", "PLMS", "LMS", "UniPC", "LCM",
]


@pytest.fixture(scope="module")
def config():
    from tiny_models import tiny_scheduler

    return dict(tiny_scheduler().config)


def test_names_cover_a1111_samplers():
    assert set(A1111_CORE) <= set(S.SAMPLER_NAMES)
    assert S.SCHEDULE_TYPES[:3] == ["normal", "karras", "exponential"]


@pytest.mark.parametrize(
    "name,cls,settings",
    [
        ("Euler", "EulerDiscreteScheduler", {}),
        ("Euler a", "EulerAncestralDiscreteScheduler", {}),
        ("Heun", "HeunDiscreteScheduler", {}),
        ("DPM2", "KDPM2DiscreteScheduler", {}),
        ("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}),
        ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        ("DPM++ 2M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        ("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
        ("DPM++ SDE", "DPMSolverSDEScheduler", {}),
        ("DDIM", "DDIMScheduler", {"clip_sample": False}),
        ("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
        ("LMS", "LMSDiscreteScheduler", {}),
        ("UniPC", "UniPCMultistepScheduler", {}),
        ("LCM", "LCMScheduler", {}),
        ("DEIS", "DEISMultistepScheduler", {}),
    ],
)
def test_mapping(config, name, cls, settings):
    sched = S.make_scheduler(config, name, "normal")
    assert type(sched).__name__ == cls
    for key, value in settings.items():
        assert sched.config[key] == value
    # The checkpoint's own configuration is kept.
    assert sched.config.beta_schedule == "scaled_linear"
    assert sched.config.beta_end == pytest.approx(0.012)
    assert sched.config.prediction_type == "epsilon"


def test_schedules_set_exactly_one_flag(config):
    karras = S.make_scheduler(config, "DPM++ 2M", "karras")
    assert karras.config.use_karras_sigmas and not karras.config.use_exponential_sigmas
    expo = S.make_scheduler(config, "Euler", "exponential")
    assert expo.config.use_exponential_sigmas and not expo.config.use_karras_sigmas
    assert S.make_scheduler(config, "Euler", "sgm_uniform").config.timestep_spacing == "trailing"
    # A checkpoint config that ships Karras sigmas still gets plain spacing for "normal".
    normal = S.make_scheduler({**config, "use_karras_sigmas": True}, "Euler", "normal")
    assert not normal.config.use_karras_sigmas
    # ...and otherwise the spacing diffusers' own from_config would give.
    assert normal.config.timestep_spacing == S.make_scheduler(config, "Euler", "normal").config.timestep_spacing


def test_fresh_instance_every_call(config):
    a = S.make_scheduler(config, "Euler", "normal")
    b = S.make_scheduler(config, "Euler", "normal")
    assert a is not b
    a.set_timesteps(4)
    assert b.num_inference_steps is None


def test_unknown_sampler_lists_valid_names(config):
    with pytest.raises(ValueError) as err:
        S.make_scheduler(config, "Euler z", "normal")
    msg = str(err.value)
    assert "'Euler z'" in msg and all(n in msg for n in S.SAMPLER_NAMES)


def test_unsupported_schedule_names_sampler_schedule_and_choices(config):
    with pytest.raises(ValueError) as err:
        S.make_scheduler(config, "DDIM", "karras")
    msg = str(err.value)
    assert "'DDIM'" in msg and "'karras'" in msg and "normal" in msg and "sgm_uniform" in msg


def test_unknown_schedule(config):
    with pytest.raises(ValueError, match="not a known schedule"):
        S.make_scheduler(config, "Euler", "Karras")


def test_aliases_and_a1111_names(config):
    assert type(S.make_scheduler(config, "PNDM", "normal")).__name__ == "PNDMScheduler"
    assert S.split_a1111_name("DPM++ 2M Karras") == ("DPM++ 2M", "karras")
    assert S.split_a1111_name("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "exponential")
    assert S.split_a1111_name("Euler a") == ("Euler a", None)
    assert S.split_a1111_name("Nonsense Karras") == ("Nonsense Karras", None)
    assert S.A1111_SCHEDULE_LABELS["Karras"] == "karras"
    assert set(S.A1111_SCHEDULE_LABELS.values()) <= set(S.SCHEDULE_TYPES)
    assert S.sampler_note("DPM++ 2S a") and not S.sampler_note("Euler")


# ------------------------------------------------ every sampler runs in the real loop


@pytest.fixture(scope="module")
def tiny_sd1():
    from tiny_models import tiny_sd1_components

    c = tiny_sd1_components()
    model = ModelBundle(
        family="sd1", name="tiny", unet=c["unet"], scheduler_config=dict(c["scheduler"].config),
        dtype=torch.float32, latent_scaling_factor=c["vae"].config.scaling_factor, vae_scale_factor=8,
    )
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 77, 32, generator=g)
    empty = torch.randn(1, 77, 32, generator=g)
    return model, Conditioning("sd1", emb, empty), Conditioning("sd1", empty, empty)


def _two_steps(tiny_sd1, sampler, schedule, batch=1):
    # cfg 1: one UNet batch per call; guidance is not what these tests are about.
    model, pos, neg = tiny_sd1
    return sample(model, pos, neg, {"samples": torch.zeros(batch, 4, 8, 8)}, seed=3, steps=2, cfg=1.0,
                  sampler_name=sampler, schedule=schedule)["samples"]


@pytest.mark.parametrize("sampler", S.SAMPLER_NAMES)
def test_every_sampler_runs_two_steps(tiny_sd1, sampler):
    out = _two_steps(tiny_sd1, sampler, "normal")
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("schedule", ["karras", "exponential"])
@pytest.mark.parametrize("sampler", S.SAMPLER_NAMES)
def test_schedule_runs_or_is_refused_clearly(tiny_sd1, sampler, schedule):
    if schedule in S.supported_schedules(sampler):
        out = _two_steps(tiny_sd1, sampler, schedule)
        assert torch.isfinite(out).all()
    else:
        with pytest.raises(ValueError, match=f"'{sampler}' does not support the '{schedule}' schedule"):
            _two_steps(tiny_sd1, sampler, schedule)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ SDE", "DPM2 a"])
def test_stochastic_samplers_are_reproducible_per_seed(tiny_sd1, sampler):
    """Step noise comes from the per-sample generators (or, for DPM++ SDE, a
    Brownian tree seeded per sample), so the same seed gives the same result."""
    a = _two_steps(tiny_sd1, sampler, "normal", batch=2)
    b = _two_steps(tiny_sd1, sampler, "normal", batch=2)
    assert torch.equal(a, b)
    assert (a[0] - a[1]).abs().max() > 1e-3
