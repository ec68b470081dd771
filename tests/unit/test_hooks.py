"""The adapter hook contract of the sampling loop.

Adapters (ControlNet, IP-Adapter, LoRA, regions, inpainting UNets) join the
loop as hooks on socket values; these tests pin the contract they rely on:
each hook is called in order, residuals add up, `end` runs even on Cancel,
and a run with hooks leaves the next run without them exact.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffusers_studio.nodes.engine import hooks
from diffusers_studio.nodes.engine.components import Conditioning, ModelBundle
from diffusers_studio.nodes.engine.sampling import sample


class Recorder(hooks.SamplingHook):
    def __init__(self, scale: float = 0.0, fail_at: int | None = None):
        self.calls, self.roles, self.scale, self.fail_at = [], [], scale, fail_at

    def begin(self, run, role):
        self.calls.append("begin")
        self.roles.append(role)
        self.run = run

    def before_unet(self, step, run, role):
        self.calls.append(f"unet{step.index}")
        if self.fail_at == step.index:
            raise KeyboardInterrupt("cancel")
        if self.scale:
            step.x_in = step.x_in * (1.0 + self.scale)

    def after_step(self, latents, step, run, role):
        self.calls.append(f"after{step.index}")
        return latents

    def end(self):
        self.calls.append("end")


@pytest.fixture(scope="module")
def tiny():
    from tiny_models import sd1_pipeline

    pipe = sd1_pipeline()
    pe, ne = pipe.encode_prompt("a cat", "cpu", 1, True, "")
    empty = pipe.encode_prompt("", "cpu", 1, False)[0]
    model = ModelBundle("sd1", "tiny", pipe.unet, dict(pipe.scheduler.config), torch.float32,
                        latent_scaling_factor=pipe.vae.config.scaling_factor)
    return model, Conditioning("sd1", pe, empty), Conditioning("sd1", ne, empty)


def _run(model, pos, neg, **kw):
    return sample(model, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=3, steps=3, cfg=5.0,
                  sampler_name="Euler", **kw)["samples"]


def test_hooks_are_called_in_order_with_their_roles(tiny):
    model, pos, neg = tiny
    shared, on_model = Recorder(), Recorder()
    _run(model.with_patch(on_model), pos.with_extra(shared), neg.with_extra(shared))
    assert shared.calls == ["begin", "unet0", "after0", "unet1", "after1", "unet2", "after2", "end"]
    assert shared.roles == [hooks.BOTH] and on_model.roles == [hooks.MODEL]
    assert shared.run.do_cfg and shared.run.batch == 1 and len(shared.run.timesteps) == 3


def test_a_hook_changes_the_result_and_leaves_the_next_run_exact(tiny):
    model, pos, neg = tiny
    before = _run(model, pos, neg)
    changed = _run(model.with_patch(Recorder(scale=0.5)), pos, neg)
    after = _run(model, pos, neg)
    assert (changed - before).abs().max() > 1e-3
    assert torch.equal(before, after)


def test_end_runs_even_when_the_run_is_cancelled(tiny):
    model, pos, neg = tiny
    hook = Recorder(fail_at=1)
    with pytest.raises(KeyboardInterrupt):
        _run(model.with_patch(hook), pos, neg)
    assert hook.calls[-1] == "end" and "unet2" not in hook.calls


def test_residuals_from_several_units_add_up():
    step = hooks.StepContext(0, torch.tensor(1), 0.0, torch.zeros(1), torch.zeros(1), torch.zeros(1), None)
    step.add_residuals([torch.ones(2), torch.ones(3)], torch.ones(1))
    step.add_residuals([torch.ones(2), torch.ones(3)], torch.ones(1) * 2)
    kwargs = step.unet_kwargs()
    assert torch.equal(kwargs["down_block_additional_residuals"][1], torch.full((3,), 2.0))
    assert torch.equal(kwargs["mid_block_additional_residual"], torch.full((1,), 3.0))


def test_socket_values_are_not_mutated_by_attaching_hooks(tiny):
    model, pos, _ = tiny
    patched = model.with_patch(Recorder())
    assert model.patches == () and len(patched.patches) == 1
    assert pos.with_extra(Recorder()).extras != pos.extras == ()
    assert replace(model) == model


class Widen(hooks.SamplingHook):
    """Adds a copy of the positive rows, then averages them back (a no-op)."""

    order = -10

    def before_unet(self, step, run, role):
        self.seen_roles = list(step.row_roles)
        b = run.batch
        step.x_in = torch.cat([step.x_in, step.x_in[-b:]])
        step.encoder_hidden_states = torch.cat([step.encoder_hidden_states, step.encoder_hidden_states[-b:]])
        step.row_roles = step.row_roles + [hooks.POSITIVE] * b

    def after_unet(self, noise_pred, step, run, role):
        b = run.batch
        extra = noise_pred[-b:]
        base = noise_pred[:-b]
        return torch.cat([base[:-b], (base[-b:] + extra) / 2])


class SeesRows(hooks.SamplingHook):
    def before_unet(self, step, run, role):
        self.rows = (step.x_in.shape[0], list(step.row_roles))


def test_a_widening_hook_runs_first_and_others_see_the_wide_batch(tiny):
    model, pos, neg = tiny
    plain = _run(model, pos, neg)
    seer, widen = SeesRows(), Widen()
    widened = _run(model.with_patch(seer).with_patch(widen), pos, neg)
    assert widen.seen_roles == [hooks.NEGATIVE, hooks.POSITIVE]
    assert seer.rows == (3, [hooks.NEGATIVE, hooks.POSITIVE, hooks.POSITIVE])
    assert (widened - plain).abs().max() <= 1e-5
