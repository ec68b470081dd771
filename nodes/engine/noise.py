"""Seeds and initial noise: one CPU generator per sample, A1111 variation seeds.

Every sample of a batch gets its own `torch.Generator`, so sample i of a
batch of 4 is the same image as a batch of 1 run with its seed (A1111's and
diffusers' `generator=[...]` behaviour) and ComfyUI's `batch_index` can pick
out one sample of an earlier batch. The generators live on the CPU: CUDA, MPS
and CPU random streams differ, and CPU generators make a seed give the same
picture on every machine. diffusers' `randn_tensor` draws on the CPU and moves
the tensor when handed CPU generators, which is what keeps parity with its
pipelines; the cost is one small host-to-device copy per draw.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

logger = logging.getLogger(__name__)

BATCH_SEED_MODES = ("increment", "fixed")
_SEED_MOD = 2**64  # torch.Generator.manual_seed takes 64-bit seeds


def sample_seeds(
    seed: int, batch: int, mode: str = "increment", batch_index: Sequence[int] | None = None
) -> list[int]:
    """The seed of each sample.

    "increment": sample i uses seed + i, or seed + batch_index[i] when the
    latent carries ComfyUI's batch_index (a sample taken out of a batch keeps
    its seed). "fixed": every sample uses `seed`.
    """
    if mode not in BATCH_SEED_MODES:
        raise ValueError(
            f"batch_seed_mode {mode!r} is not known: use one of {', '.join(BATCH_SEED_MODES)}"
        )
    if mode == "fixed":
        return [int(seed) % _SEED_MOD] * batch
    offsets = list(batch_index) if batch_index is not None else list(range(batch))
    if len(offsets) != batch:
        raise ValueError(
            f"latent batch_index has {len(offsets)} entries but the latent batch has {batch} "
            "samples: pass the batch_index that came with these latents, or none"
        )
    return [(int(seed) + int(o)) % _SEED_MOD for o in offsets]


def generators_for(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed (see the module docstring for why CPU)."""
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def batch_generators(
    seed: int, batch: int, mode: str = "increment", batch_index: Sequence[int] | None = None
) -> list[torch.Generator]:
    """One CPU generator per sample, seeded as `sample_seeds` says."""
    return generators_for(sample_seeds(seed, batch, mode, batch_index))


def seed_plan(
    seed: int,
    batch: int,
    mode: str = "increment",
    batch_index: Sequence[int] | None = None,
    variation_seed: int = 0,
    variation_strength: float = 0.0,
) -> tuple[list[int], list[int] | None]:
    """(main seeds, variation seeds or None) for a batch.

    With a variation strength, A1111 keeps the main seed the same for the
    whole batch and steps the variation seed instead, so a batch shows
    variations of one picture; "increment" follows that rule here too.
    """
    if not 0.0 <= variation_strength <= 1.0:
        raise ValueError(
            f"variation_strength must be between 0 and 1, got {variation_strength}: "
            "0 turns variations off, 1 uses the variation seed alone"
        )
    if variation_strength == 0.0:
        return sample_seeds(seed, batch, mode, batch_index), None
    main = sample_seeds(seed, batch, "fixed")
    return main, sample_seeds(variation_seed, batch, mode, batch_index)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two noise tensors of one sample.

    A copy of A1111's `slerp` (modules/processing.py), including its quirks,
    so that variation seeds reproduce A1111's noise bit for bit in its "CPU"
    RNG mode: it is applied to one sample's [C, H, W] noise and normalises
    along dim 1 (so each (channel, column) vector is interpolated on its own),
    and when the two are nearly parallel it falls back to a lerp written as
    `low * val + high * (1 - val)` -- the weights read swapped, but the
    branch only runs when low and high are practically equal, where the
    weights do not matter.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)

    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)

    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (
        torch.sin(val * omega) / so
    ).unsqueeze(1) * high


def initial_noise(
    shape: Sequence[int],
    generators: list[torch.Generator],
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    variation_generators: list[torch.Generator] | None = None,
    variation_strength: float = 0.0,
) -> torch.Tensor:
    """The starting noise of a batch, drawn as diffusers' prepare_latents does.

    Without a variation it is exactly `randn_tensor(shape, generator=list)`,
    so the engine and diffusers' pipelines start from the same tensor. With a
    variation seed, both noises are drawn in float32 and mixed per sample with
    A1111's slerp at `variation_strength`, then moved to `device`/`dtype`.
    The generators advance, and the scheduler's own noise (ancestral and SDE
    samplers) continues from them, as in diffusers.
    """
    shape = tuple(int(s) for s in shape)
    if len(generators) != shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {shape[0]}")
    if variation_generators is None or variation_strength == 0.0:
        return randn_tensor(shape, generator=generators, device=torch.device(device), dtype=dtype)
    if len(variation_generators) != shape[0]:
        raise ValueError(f"{len(variation_generators)} variation generators for a batch of {shape[0]}")
    cpu = torch.device("cpu")
    base = randn_tensor(shape, generator=generators, device=cpu, dtype=torch.float32)
    sub = randn_tensor(shape, generator=variation_generators, device=cpu, dtype=torch.float32)
    mixed = torch.stack([slerp(variation_strength, base[i], sub[i]) for i in range(shape[0])])
    return mixed.to(device=device, dtype=dtype)
