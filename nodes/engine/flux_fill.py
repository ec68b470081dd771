"""FLUX.1 Fill's extra transformer inputs: the masked image's latents and the mask, per latent pixel.

FluxFillPipeline concatenates, per packed token, the latents (64), the
masked image's latents (64) and the pixel mask cut into 8x8 patches, one per
latent pixel, then packed (4 * 64 = 256). Packing works channel by channel,
so the same input is the unpacked [latents (16), masked latents (16),
mask patches (64)] concatenated on the channel axis and packed by the
family's `predict`: this hook appends the two extras to the transformer
input of every row, as its base InpaintModelInputs does for 9-channel UNets.

The pipeline's mask is binarised at 0.5 (VaeImageProcessor do_binarize),
its masked image is the image with the mask area set to grey (0 in [-1, 1]),
and it encodes the image even at strength 1: `draws_image` tells the sampler
to draw the image's posterior before the noise then too (posterior.py).
"""
from __future__ import annotations

import torch

from . import families
from .hooks import RunContext
from .inpaint import InpaintModelInputs


def mask_patches(pixel_mask: torch.Tensor, factor: int) -> torch.Tensor:
    """[B,H,W] pixel mask -> [B, factor*factor, H/factor, W/factor]: binarised, one patch per latent pixel."""
    b, h, w = (int(s) for s in pixel_mask.shape)
    hard = (pixel_mask >= 0.5).to(torch.float32)
    x = hard.view(b, h // factor, factor, w // factor, factor).permute(0, 2, 4, 1, 3)
    return x.reshape(b, factor * factor, h // factor, w // factor).contiguous()


class FluxFillInputs(InpaintModelInputs):
    """Appends [masked image latents, mask patches] to every transformer row (FLUX.1 Fill)."""

    unet_extra_channels = 0  # not a UNet's: the flow latent check reads fill_channels
    draws_image = True  # the pipeline samples the image's posterior at every strength
    flow_inpaint = True  # accepted by the flow families' latent check
    made_by, made_for = "Diffusers Inpaint", "FLUX.1 Fill"  # named by the latent check's refusal

    def __init__(self, mask: torch.Tensor, masked_latents: torch.Tensor):
        super().__init__(mask, masked_latents)  # mask [n, f*f, h, w] 0/1, masked latents raw (the mean)
        self.fill_channels = int(mask.shape[1]) + int(masked_latents.shape[1])  # read by the latent check

    def begin(self, run: RunContext, role: str) -> None:
        if tuple(self.mask.shape[-2:]) != tuple(run.latent_size):
            raise ValueError(
                f"the inpaint mask is {tuple(self.mask.shape[-2:])} latent pixels but the latent is "
                f"{tuple(run.latent_size)}: resize the image before Diffusers Inpaint, not the latent after it"
            )
        n = int(self.mask.shape[0])
        if run.batch % n:
            raise ValueError(
                f"the inpaint latent holds {n} masks but the batch has {run.batch} images: "
                "sample the latent from Diffusers Inpaint as it is"
            )
        masked = self.masked_latents
        deviation = run.masked_image_deviation
        if deviation is not None and tuple(deviation.shape) == tuple(masked.shape):
            masked = masked + deviation  # the posterior sample the pipeline's generator drew
        masked = families.of(run.model).to_model_space(run.model, masked, run.device, run.dtype)
        repeat = run.batch // n
        mask = self.mask.repeat(repeat, 1, 1, 1).to(run.device, run.dtype)
        self._run = (masked.repeat(repeat, 1, 1, 1), mask)
