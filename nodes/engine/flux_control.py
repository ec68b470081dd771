"""FLUX.1 Canny dev / Depth dev: the control image's latents next to the latents, per token.

These models are dev's transformer with a doubled input (in_channels 128 =
64 + 64 packed): FluxControlPipeline encodes the control image (an already
made canny edge map or depth map) with the VAE, *samples* its posterior with
the run's generator before it draws the starting noise, shifts and scales it
like the latents, packs it, and concatenates it to the latents on every
step (`torch.cat([latents, control_image], dim=2)`). Packing works channel by
channel, so appending the 16 unpacked control channels to every transformer
row before the family packs them is the same input (as flux_fill.py does for
Fill's extras).

The control image is encoded once, when the node runs (mean and std at the
latent's pixel size); the sampler draws `mean + std * eps` per sample with
generator i (seed + i), where the pipeline does, so the same seed gives the
pipeline's picture. The hook rides on the LATENT, so it composes with an
empty latent (FluxControlPipeline) and an encoded image
(FluxControlImg2ImgPipeline), both reproduced to 1e-4, and with Diffusers
Inpaint's latents for an ordinary Flux model. FluxControlInpaintPipeline
draws the masked image's posterior first, then the control image's, then the
picture's and the noise (FluxInpaintPipeline draws the masked image last), so
that combination keeps the outside as Diffusers Inpaint does but does not
repeat that pipeline's random draws.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import families, posterior
from .components import CONTROL, FLUX
from .hooks import RunContext, SamplingHook, StepContext
from .inpaint import append_per_image

MADE_BY = "Diffusers Flux Control Image"


class FluxControlInputs(SamplingHook):
    """Appends the control image's latents (model space) to every transformer row."""

    order = 1000  # last, with the inpaint extras: other hooks see the latents alone
    flow_inpaint = True  # accepted by the flow families' latent check, which reads fill_channels
    made_by, made_for = MADE_BY, "FLUX.1 Canny/Depth dev"  # named by the latent check's refusal

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        if mean.shape != std.shape or mean.ndim != 4:
            raise ValueError(f"control latents must be [n, C, h, w] mean and std, got {tuple(mean.shape)} "
                             f"and {tuple(std.shape)}")
        self.posterior = posterior.Posterior(mean, std)  # [n, C, h, w] raw VAE latents (float32, CPU)
        self.fill_channels = int(mean.shape[1])  # read by the Flux latent check
        self._drawn: Optional[torch.Tensor] = None
        self._run: Optional[tuple] = None

    @property
    def mean(self) -> torch.Tensor:
        """The control image's mean latents (what a run without `draw` uses)."""
        return self.posterior.mean

    def draw(self, model, batch: int, pixel_size: tuple, generators: Sequence[torch.Generator]) -> None:
        """The posterior sample, per image with its own generator, before the starting noise."""
        n = int(self.mean.shape[0])
        if batch % n:
            raise ValueError(
                f"Diffusers Flux Control Image holds {n} control images but the batch has {batch} pictures: "
                "give one control image, or one per picture"
            )
        self._drawn = posterior.sample(self.posterior, batch, generators)

    def begin(self, run: RunContext, role: str) -> None:
        model = run.model
        if (model.family, getattr(model, "variant", None)) != (FLUX, CONTROL):
            raise ValueError(
                f"the latent carries a control image from {MADE_BY}, which only FLUX.1 Canny dev and Depth dev "
                f"take, but model {model.name!r} is {families.of(model).label}: sample with a Canny/Depth dev "
                "model, or use Diffusers ControlNet with a ControlNet made for this model"
            )
        if tuple(self.mean.shape[-2:]) != tuple(run.latent_size):
            raise ValueError(
                f"the control image was encoded at {tuple(self.mean.shape[-2:])} latent pixels but the latent is "
                f"{tuple(run.latent_size)}: resize the latent before {MADE_BY}, not after it"
            )
        drawn = self._drawn
        if drawn is None:  # a caller that skips draw: take the mean, as ComfyUI would
            drawn = self.mean.repeat(run.batch // int(self.mean.shape[0]), 1, 1, 1)
        control = families.of(model).to_model_space(model, drawn, run.device, run.dtype)
        self._run = (control,)
        self._drawn = None

    def before_unet(self, step: StepContext, run: RunContext, role: str) -> None:
        step.x_in = append_per_image(step.x_in, run.batch, self._run)

    def end(self) -> None:
        self._run = None
        self._drawn = None


__all__ = ["FluxControlInputs", "MADE_BY"]
