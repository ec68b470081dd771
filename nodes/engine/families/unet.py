"""What the UNet families (SD1.x, SDXL, the SDXL refiner) share.

CLIP text windows of 77 tokens chunked A1111's way, epsilon / v-prediction
schedulers named the A1111 way, a UNet2DConditionModel called with the text
sequence as cross-attention input, 4-channel latents at 1/8 of the picture.
The CFG batch is [negative x B, positive x B], diffusers' order, so that a
run reproduces the diffusers pipelines.

Adapter hooks attach to the UNet call here: ControlNet residuals and
cross-attention kwargs come from `StepContext.unet_kwargs()`, IP-Adapter and
regional prompts install attention processors on the UNet in `begin`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import schedulers
from ..components import Conditioning, ModelBundle
from .base import DenoiserInputs, Family


def pad_to_same_length(pos: Conditioning, neg: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the shorter prompt with its own empty 77-token chunks (A1111's rule)."""
    a, b = pos.embeds, neg.embeds

    def pad(cond: Conditioning, emb: torch.Tensor, length: int, which: str) -> torch.Tensor:
        chunk = cond.empty_chunk.to(emb.device, emb.dtype)
        missing = length - int(emb.shape[1])
        if missing % int(chunk.shape[1]) != 0:
            raise ValueError(
                f"{which} conditioning is {int(emb.shape[1])} tokens long and cannot be padded "
                f"to {length} with {int(chunk.shape[1])}-token chunks: encode both prompts "
                "with the same text encoder"
            )
        reps = missing // int(chunk.shape[1])
        chunk = chunk.expand(emb.shape[0], -1, -1)
        return torch.cat([emb] + [chunk] * reps, dim=1)

    if a.shape[1] < b.shape[1]:
        a = pad(pos, a, int(b.shape[1]), "positive")
    elif b.shape[1] < a.shape[1]:
        b = pad(neg, b, int(a.shape[1]), "negative")
    return a, b


def per_sample(t: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    """Repeat a batch-1 tensor to `batch` rows (diffusers' num_images_per_prompt)."""
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.repeat(batch, *([1] * (t.ndim - 1)))
    raise ValueError(f"{what} has batch {t.shape[0]} but the latent batch is {batch}: use one {what} or one per latent")


def guidance_embedding(w: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """diffusers' get_guidance_scale_embedding, for guidance-distilled (LCM) UNets."""
    w = w * 1000.0
    half = dim // 2
    emb = torch.log(torch.tensor(10000.0)) / (half - 1)
    emb = torch.exp(torch.arange(half, dtype=dtype) * -emb)
    emb = w.to(dtype)[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def final_layer_norm(encoder):
    """CLIP's final LayerNorm, wherever this transformers version keeps it.

    transformers 5.6 flattened CLIPTextModel (no `text_model` wrapper), which
    breaks diffusers' own clip_skip path (huggingface/diffusers#14124).
    """
    return getattr(encoder, "text_model", encoder).final_layer_norm


class UNetFamily(Family):
    """A UNet2DConditionModel family with CLIP text encoders."""

    sampler_names = tuple(schedulers.SAMPLER_NAMES)
    default_sampler = "Euler a"
    prompt_syntax = (
        "A1111 syntax: (word:1.2) emphasis, [word] de-emphasis, BREAK starts a new 75-token chunk; "
        "prompts of any length are encoded in 75-token chunks."
    )

    # ---- predict
    def check_latent(self, model: ModelBundle, latent: dict, samples: torch.Tensor, model_label: str) -> None:
        channels = int(samples.shape[1])
        expected = model.latent_channels
        if channels == expected:
            return
        out_channels = int(getattr(model.unet.config, "out_channels", expected))
        if expected == out_channels + 5 and channels == out_channels:
            # An inpainting UNet: a hook (Diffusers Inpaint's) appends the mask
            # and the masked image latents to every UNet input.
            extra = sum(int(getattr(h, "unet_extra_channels", 0)) for h in latent.get("ds_hooks") or ())
            if channels + extra == expected:
                return
            raise ValueError(
                f"{model_label} is an inpainting model ({expected} input channels): "
                "it needs a mask and a masked image: make its latent with Diffusers Inpaint "
                "(DSInpaint) from the image and the mask, or use a regular checkpoint"
            )
        raise ValueError(
            f"latent_image has {channels} channels, {model_label} expects {expected}: "
            "encode the image with this model's VAE (or use an empty latent made for it)"
        )

    def check_conditioning(self, model: ModelBundle, cond: Conditioning, which: str, model_label: str) -> None:
        expected = getattr(model.unet.config, "cross_attention_dim", None)
        if isinstance(expected, int) and int(cond.embeds.shape[-1]) != expected:
            raise ValueError(
                f"{which} conditioning has {int(cond.embeds.shape[-1])}-wide embeddings, "
                f"{model_label} expects {expected}: encode the prompt with this "
                "checkpoint's text encoder"
            )

    def added_cond_kwargs(self, model, conds, batch, pixel_size, device, dtype, **options) -> Optional[dict]:
        """The UNet's added conditioning for the CFG rows `conds` (None: the UNet takes none)."""
        return None

    def denoiser_inputs(self, model, positive, negative, cfg, batch, pixel_size, device, **options) -> DenoiserInputs:
        """Text embeddings (and added conditioning) batched as diffusers does.

        cfg == 1 (or a guidance-distilled UNet) runs the positive alone: the
        negative's term would cancel out exactly, so the second half of the
        batch is waste.
        """
        dtype = model.dtype
        time_cond_dim = getattr(model.unet.config, "time_cond_proj_dim", None)
        do_cfg = cfg != 1.0 and time_cond_dim is None
        if do_cfg and negative is None:
            raise ValueError(f"cfg is {cfg} but no negative conditioning was given: connect one or set cfg to 1")

        if do_cfg:
            pos_e, neg_e = pad_to_same_length(positive, negative)
            embeds = torch.cat([per_sample(neg_e, batch, "negative"), per_sample(pos_e, batch, "positive")])
        else:
            embeds = per_sample(positive.embeds, batch, "positive")
        embeds = embeds.to(device=device, dtype=dtype)

        conds = [negative, positive] if do_cfg else [positive]
        added = self.added_cond_kwargs(model, conds, batch, pixel_size, device, dtype, **options)

        timestep_cond = None
        if time_cond_dim is not None:
            w = torch.tensor(cfg - 1.0).repeat(batch)
            timestep_cond = guidance_embedding(w, int(time_cond_dim), dtype).to(device=device, dtype=dtype)
        return DenoiserInputs(embeds, added, timestep_cond, do_cfg)

    def predict(self, model: ModelBundle, step) -> torch.Tensor:
        return model.unet(
            step.x_in,
            step.timestep,
            encoder_hidden_states=step.encoder_hidden_states,
            timestep_cond=step.timestep_cond,
            added_cond_kwargs=step.added_cond_kwargs,
            return_dict=False,
            **step.unet_kwargs(),
        )[0]

    # ---- schedulers
    def make_scheduler(self, model: ModelBundle, sampler_name: str, schedule: str, latent_size=None):
        return schedulers.make_scheduler(model.scheduler_config, sampler_name, schedule)
