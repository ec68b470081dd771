"""Contract checks shared by the transformer IP-Adapter tests (Flux.1, SD3): window, mask, restore.

`run(model)` samples a model (the same prompt, seed and steps each time) and
returns the latents; the checks compare runs of the plain model and of the
model with the adapter applied in several ways.
"""
from __future__ import annotations

import torch

from diffusers_studio.nodes.engine.ip_adapter import apply_ip_adapter
from diffusers_studio.nodes.engine.sampling import sample
from diffusers_studio.nodes.engine.text_encoding import encode_prompt


def sample_16ch(text, model, size: int, steps: int, prompt="a cat", negative="", cfg=1.0, seed=7):
    """Samples a 16-channel transformer (Flux, SD3) from a zero latent with Euler: the pack's side of a parity check."""
    pos, neg = encode_prompt(text, prompt), encode_prompt(text, negative)
    return sample(model, pos, neg, {"samples": torch.zeros(1, 16, size // 8, size // 8)}, seed=seed, steps=steps,
                  cfg=cfg, sampler_name="Euler")["samples"]


def max_diff(a, b) -> float:
    """The largest absolute difference of two tensors."""
    return float((a - b).abs().max())


def check_run_restores(run, model, adapter, image) -> None:
    """A run with the adapter puts the transformer's processors back as the same objects, results unchanged."""
    before = dict(model.unet.attn_processors)
    plain = run(model)
    run(apply_ip_adapter(model, adapter, images=image, weight=1.0))
    after = model.unet.attn_processors
    assert all(after[name] is proc for name, proc in before.items())
    assert torch.equal(run(model), plain)


def check_window_and_mask(run, model, adapter, image, size: int) -> None:
    """Step window and mask: a closed window is no adapter, a late one differs, a white mask is no mask."""
    plain = run(model)
    full = run(apply_ip_adapter(model, adapter, images=image, weight=1.0))
    # A window that closes before the first step leaves the run as without the adapter.
    off = run(apply_ip_adapter(model, adapter, images=image, weight=1.0, start_percent=0.0, end_percent=0.0))
    assert torch.equal(off, plain)
    late = run(apply_ip_adapter(model, adapter, images=image, weight=1.0, start_percent=0.5))
    assert max_diff(late, plain) > 1e-4 and max_diff(late, full) > 1e-4
    # An all-white mask is the whole picture; half a mask acts on half of it.
    whole = run(apply_ip_adapter(model, adapter, images=image, weight=1.0, mask=torch.ones(1, size, size)))
    assert max_diff(whole, full) <= 1e-5
    half = torch.zeros(1, size, size)
    half[:, :, : size // 2] = 1.0
    masked = run(apply_ip_adapter(model, adapter, images=image, weight=1.0, mask=half))
    assert max_diff(masked, full) > 1e-4 and max_diff(masked, plain) > 1e-4
