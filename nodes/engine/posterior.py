"""The VAE posterior: sampling it with the run's seed, as diffusers and A1111 do.

diffusers' image-to-image and inpaint pipelines do not encode a picture to one
latent: `retrieve_latents` calls `latent_dist.sample(generator)`, i.e.
`mean + std * randn_tensor(mean.shape, generator)`, with the *same* seeded
generator that then draws the starting noise. A1111 samples the posterior
too. ComfyUI takes the mode (the mean), which is deterministic. The two give
different pictures for the same seed, so the pack offers both:

- "sample" (the default, diffusers' and A1111's way): the encoder node stores
  the mean in LATENT["samples"] (so native ComfyUI nodes see an ordinary
  latent) and a `Posterior` (mean and std) under `KEY`. The sampler, which
  owns the seed, draws the latent right before the noise.
- "mode" (ComfyUI's way): no `Posterior`; the latent is the mean.

Draw order, per generator, as the pipelines consume them (one CPU generator
per sample, see noise.py):

- img2img (StableDiffusion[XL]Img2Img, ControlNetImg2Img): the image is
  repeated to the batch first, then sample i is drawn with generator i; then
  the starting noise. `Posterior.per_image` is False.
- inpaint (StableDiffusion[XL]Inpaint): `_encode_vae_image` draws one sample
  per *source image* with generators[:n] and repeats the result to the batch
  (`per_image` True). The image is drawn before the noise when the pipeline
  needs it (always for 4-channel UNets, below strength 1 for 9-channel ones);
  `prepare_mask_latents` then draws the masked image's posterior after the
  noise, for both kinds of UNet (the 4-channel pipeline discards it but the
  generator has advanced, which ancestral samplers notice). That second
  posterior travels under `MASKED_KEY`.

A native node that changes the latent (upscale, composite, batch pick) keeps
extra keys in the dict but changes "samples"; `image_draw` notices the
samples are no longer the stored mean and falls back to the samples as they
are, i.e. to the mode. The sampler's output never carries the keys.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from . import vae_codec

logger = logging.getLogger(__name__)

SAMPLING_MODES = ("sample", "mode")
DEFAULT_SAMPLING = "sample"
KEY = "ds_posterior"  # the image's posterior, drawn before the starting noise
MASKED_KEY = "ds_masked_posterior"  # the inpaint masked image's, drawn after it


@dataclass(frozen=True)
class Posterior:
    """A diagonal Gaussian over unscaled VAE latents ([n, C, h, w], float32, CPU)."""

    mean: torch.Tensor
    std: torch.Tensor
    per_image: bool = False  # True: one draw per source image, repeated (inpaint pipelines)


def check_mode(latent_sampling: str) -> str:
    if latent_sampling not in SAMPLING_MODES:
        raise ValueError(
            f"latent_sampling: {latent_sampling!r} is not one of {list(SAMPLING_MODES)}: use 'sample' for "
            "diffusers'/A1111's seeded pictures or 'mode' for ComfyUI's deterministic encoding"
        )
    return latent_sampling


def encode(vae, images: torch.Tensor, latent_sampling: str = DEFAULT_SAMPLING, *, per_image: bool = False,
           **codec_kwargs) -> tuple[torch.Tensor, Optional[Posterior]]:
    """(mean latents, Posterior or None for "mode") of an IMAGE through vae_codec.encode."""
    if check_mode(latent_sampling) == "mode":
        return vae_codec.encode(vae, images, **codec_kwargs), None
    mean, std = vae_codec.encode(vae, images, with_std=True, **codec_kwargs)
    return mean, Posterior(mean, std, per_image)


def _repeat_to(x: torch.Tensor, batch: int) -> Optional[torch.Tensor]:
    n = int(x.shape[0])
    if batch % n:
        return None
    return x.repeat(batch // n, 1, 1, 1) if batch != n else x


def _deviation(posterior: Posterior, batch: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """std * eps for a batch, consuming the generators in the pipelines' order."""
    n = int(posterior.mean.shape[0])
    if posterior.per_image:
        if len(generators) < n:
            raise ValueError(
                f"the latent holds {n} source images but the batch has {len(generators)} seeds: "
                "sample the latent from Diffusers Inpaint as it is"
            )
        eps = randn_tensor(tuple(posterior.mean.shape), generator=list(generators[:n]), device=torch.device("cpu"),
                           dtype=torch.float32)
        return _repeat_to(posterior.std * eps, batch)
    std = _repeat_to(posterior.std, batch)
    eps = randn_tensor((batch, *std.shape[1:]), generator=list(generators), device=torch.device("cpu"),
                       dtype=torch.float32)
    return std * eps


def sample(posterior: Posterior, batch: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """mean + std * eps for `batch` pictures: diffusers' retrieve_latents(..., generator) with one
    generator per picture (unscaled, float32, CPU). The batch must be a multiple of the means."""
    mean = _repeat_to(posterior.mean, batch)
    if mean is None:
        raise ValueError(f"{int(posterior.mean.shape[0])} encoded images do not divide a batch of {batch}")
    return mean + _deviation(posterior, batch, generators)


def _usable(posterior, like: torch.Tensor) -> bool:
    return (
        isinstance(posterior, Posterior)
        and tuple(posterior.mean.shape[1:]) == tuple(like.shape[1:])
        and int(like.shape[0]) % int(posterior.mean.shape[0]) == 0
    )


def image_draw(latent: dict, generators: Sequence[torch.Generator]) -> Optional[torch.Tensor]:
    """The sampled image latents (unscaled, float32, CPU), or None to use "samples" as they are.

    None when the latent has no posterior ("mode") or when "samples" are no
    longer the stored mean (a native node changed them): then nothing is drawn.
    """
    posterior = latent.get(KEY)
    samples = latent["samples"]
    if posterior is None:
        return None
    if not _usable(posterior, samples):
        logger.info("latent posterior does not fit the samples (changed by another node): using the samples as they are")
        return None
    mean = _repeat_to(posterior.mean, int(samples.shape[0]))
    if not torch.equal(samples.float().cpu(), mean):
        logger.info("latent samples were changed after encoding: using them as they are (the mode)")
        return None
    return sample(posterior, int(samples.shape[0]), generators)


def masked_image_deviation(latent: dict, generators: Sequence[torch.Generator]) -> Optional[torch.Tensor]:
    """std * eps of the inpaint masked image's posterior (unscaled, [n or batch, C, h, w]), or None.

    Drawn after the starting noise, as prepare_mask_latents does; per source
    image, so it has the masked latents' batch, not the run's.
    """
    posterior = latent.get(MASKED_KEY)
    samples = latent["samples"]
    if posterior is None or not _usable(posterior, samples):
        return None
    return _deviation(posterior, int(posterior.mean.shape[0]), generators)


def without_posteriors(latent: dict) -> dict:
    """A copy of the LATENT without the posterior keys (a sampled latent has none)."""
    return {k: v for k, v in latent.items() if k not in (KEY, MASKED_KEY)}
