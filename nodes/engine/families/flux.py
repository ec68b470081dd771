"""Flux.1 dev and schnell: CLIP-L pooled + T5, packed 2x2 latent tokens, a guidance embedding.

Encoding is FluxPipeline.encode_prompt: CLIP-L's pooled output of a 77-token
window (no hidden states) and T5's sequence of `max_sequence_length` tokens
(the family default: 512 for dev, 256 for schnell, as the model cards use).

Prediction: the LATENT socket and the loop keep [B, 16, h, w]; `predict`
packs 2x2 latent patches into tokens ([B, h/2 * w/2, 64], FluxPipeline's
_pack_latents), gives the transformer the latent image ids and zero text
ids, the timestep / 1000 and (dev) the distilled guidance, and unpacks its
output. The scheduler step is elementwise, so stepping unpacked latents is
the same arithmetic as the pipeline's packed ones.

Guidance: dev's guidance embedding takes the prompt's `guidance`
(DSFluxGuidance, default 3.5 as FluxPipeline's guidance_scale); schnell has
none. The sampler's cfg is true CFG (FluxPipeline's true_cfg_scale): above
1 the negative prompt is run too, at twice the cost.

Shift: FluxPipeline passes sigmas linspace(1, 1/steps) and
mu = calculate_shift(image tokens) from the scheduler config; the scheduler
applies mu when its config has use_dynamic_shifting (dev), else its fixed
shift (schnell: 1).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from ..components import CONTROL, DEV, FILL, FLUX, SCHNELL, ModelBundle, compute_dtype
from .base import IP_ADAPTER, DenoiserInputs, EncoderSlot, LatentFormat
from ..window_prompt import window_ids, window_prompt
from .flow import FlowFamily, calculate_shift

logger = logging.getLogger(__name__)

CLIP_L = EncoderSlot("text_encoder", "tokenizer", "CLIPTextModel")
T5 = EncoderSlot("text_encoder_2", "tokenizer_2", "T5EncoderModel", tokenizer_class="T5TokenizerFast",
                 window=512, embedding_key="t5")
DEFAULT_GUIDANCE = 3.5
FILL_GUIDANCE = 30.0  # FluxFillPipeline's default guidance_scale
# FLUX.1 Canny/Depth dev: BFL's examples use 30 (Canny) and 10 (Depth); FluxControlPipeline's
# own default is dev's 3.5, which gives washed-out pictures with these models. 10 is the middle.
CONTROL_GUIDANCE = 10.0


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, C * 4]: 2x2 patches as tokens."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack` for an [h, w] latent."""
    b, _, d = tokens.shape
    x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def latent_image_ids(h2: int, w2: int, device, dtype) -> torch.Tensor:
    """[h2 * w2, 3] position ids (0, row, column) of the packed tokens."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


class FluxFamily(FlowFamily):
    family = FLUX
    short_label = "Flux"
    pipeline_classes = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline",
                        "FluxControlPipeline", "FluxControlImg2ImgPipeline", "FluxControlInpaintPipeline")
    denoiser_class = "FluxTransformer2DModel"
    text_encoders = (CLIP_L, T5)
    latent_format = LatentFormat(
        channels=16, scaling_factor=0.3611, shift_factor=0.1159, packing="2x2", preview="Flux", native_size=1024
    )

    shared_cond_keys = ("txt_ids",)  # [tokens, 3]: one for every row, never widened by regional prompts

    def __init__(self, variant: str, guidance: bool, max_sequence_length: int, steps: int,
                 default_guidance: float = DEFAULT_GUIDANCE, shared_text_variants: tuple = ()):
        self.variant = variant
        self.key = f"flux_{variant}"
        self.label = f"Flux.1 {variant}"
        self.log_name = f"flux {variant}"
        self.guidance_embedding = guidance
        self.default_max_sequence_length = max_sequence_length
        self.default_steps = steps
        self.default_guidance = default_guidance
        self.shared_text_variants = shared_text_variants

    # ---- load
    def folder_variant(self, path: str) -> str:
        """dev has a guidance embedding (transformer config guidance_embeds), schnell none.

        Fill (FLUX.1-Fill-dev) is told by its input width: in_channels =
        2 * out_channels (latents + masked image) + 4 * 64 (8x8 pixel mask
        patches of the 2x2 packed latent pixels), 384 for the real model;
        Canny/Depth dev by in_channels = 2 * out_channels (latents + control
        image latents), 128.
        """
        try:
            with open(os.path.join(path, "transformer", "config.json"), encoding="utf-8") as fh:
                config = json.load(fh)
        except (OSError, ValueError):
            return DEV  # the loader reports the missing transformer itself
        if is_fill_config(config):
            return FILL
        if is_control_config(config):
            return CONTROL
        return DEV if bool(config.get("guidance_embeds", False)) else SCHNELL

    # ---- encode
    def encode_prompt(self, bundle, text, *, clip_skip=1, embeddings=None, max_sequence_length=None, **options):
        from ..components import Conditioning
        from ..text_encoding import encoder_device, patches_applied

        self.check_text_bundle(bundle, text, embeddings)
        length = self.check_max_sequence_length(max_sequence_length or self.default_max_sequence_length)
        if clip_skip != 1:
            raise ValueError(
                f"clip_skip: got {clip_skip!r}; {self.label} takes CLIP-L's pooled output only, which "
                "clip_skip does not change: set clip_skip to 1"
            )
        prompt = window_prompt(text, self.short_label)
        (tok_l, tok_t5), (enc_l, enc_t5) = bundle.tokenizers, bundle.text_encoders
        with torch.no_grad(), patches_applied(bundle):  # the text encoders' LoRA, for this encode
            # CLIP-L gives only the pooled prompt, which emphasis never weights (A1111's rule for SDXL's pooled)
            ids = window_ids(tok_l, prompt.plain, int(tok_l.model_max_length), "CLIP")
            pooled = enc_l(ids.to(encoder_device(enc_l)), output_hidden_states=False).pooler_output
            pooled = pooled.to(dtype=compute_dtype(enc_l))
            embeds = self.t5_sequence(tok_t5, enc_t5, prompt, length).to(dtype=compute_dtype(enc_t5))
        return Conditioning(
            family=bundle.family, embeds=embeds, empty_chunk=embeds[:, :0], pooled=pooled.to(embeds.device),
            variant=bundle.variant,
        )

    # ---- predict
    def expected_channels(self, model: ModelBundle) -> int:
        """The LATENT's channels: the transformer's output, unpacked (Fill takes more in)."""
        config = model.denoiser.config
        return int(getattr(config, "out_channels", None) or config.in_channels) // 4

    def input_channels(self, model: ModelBundle) -> int:
        """The packed input channels per latent pixel; FLUX.1 dev carrying a control LoRA takes twice its
        own, as its input layer is widened for each run (lora_control.py)."""
        own = int(model.denoiser.config.in_channels) // 4
        if self.variant == CONTROL and own == self.expected_channels(model):
            return 2 * own
        return own

    def check_latent(self, model: ModelBundle, latent: dict, samples: torch.Tensor, model_label: str) -> None:
        """The extra input channels the hooks on the latent add must be what the transformer takes more."""
        super().check_latent(model, latent, samples, model_label)
        hooks = latent.get("ds_hooks") or ()
        extra = sum(int(getattr(h, "fill_channels", 0)) for h in hooks)
        wanted = self.input_channels(model) - self.expected_channels(model)
        if extra == wanted:
            return
        packed = self.input_channels(model) * 4
        if self.variant == FILL and not extra:
            raise ValueError(
                f"{model_label} is FLUX.1 Fill ({packed} packed input channels): it needs a mask and the masked "
                "image: make its latent with Diffusers Inpaint (DSInpaint) from the image and the mask, or use "
                "FLUX.1 dev / schnell for text-to-image and image-to-image"
            )
        if self.variant == CONTROL and not extra:
            raise ValueError(
                f"{model_label} is FLUX.1 Canny/Depth dev ({packed} packed input channels): it needs a control "
                "image: pass the latent through Diffusers Flux Control Image (DSFluxControlImage) with your "
                "canny or depth map, or use FLUX.1 dev / schnell without one"
            )
        makers = [h for h in hooks if getattr(h, "fill_channels", 0)]
        made_by = " and ".join(sorted({h.made_by for h in makers}))
        made_for = " and ".join(sorted({h.made_for for h in makers}))
        raise ValueError(
            f"the latent was made by {made_by} for {made_for}, but {model_label} is {self.label}: "
            f"run {made_by} with the model you sample with"
        )

    def latent_multiple(self, model: ModelBundle) -> int:
        return 2

    def adapter_refusal(self, kind: str):
        """Flux takes XLabs-layout IP-Adapters (ip_adapter_flux.py); the rest as the flow families."""
        if kind == IP_ADAPTER:
            return None
        return super().adapter_refusal(kind)

    def denoiser_inputs(self, model, positive, negative, cfg, batch, pixel_size, device, **options) -> DenoiserInputs:
        do_cfg = cfg > 1.0 and negative is not None
        dtype = model.dtype
        embeds = self.cfg_batch(positive, negative, do_cfg, batch, "embeds", device, dtype)
        pooled = self.cfg_batch(positive, negative, do_cfg, batch, "pooled", device, dtype)
        guidance = None
        if bool(getattr(model.denoiser.config, "guidance_embeds", False)):
            pos = positive.guidance if positive.guidance is not None else self.default_guidance
            values = [pos] * batch
            if do_cfg:
                neg = negative.guidance if negative.guidance is not None else pos
                values = [neg] * batch + values
            guidance = torch.tensor(values, device=device, dtype=torch.float32)
        elif positive.guidance is not None:
            logger.warning(
                "%s has no guidance embedding (Flux schnell): the prompt's guidance %s is not used",
                model.name, positive.guidance,
            )
        added = {"pooled_projections": pooled, "txt_ids": torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype)}
        return DenoiserInputs(embeds, added, guidance, do_cfg)

    def predict(self, model: ModelBundle, step) -> torch.Tensor:
        x = step.x_in
        h, w = int(x.shape[-2]), int(x.shape[-1])
        tokens = pack(x)
        timestep = step.timestep.expand(x.shape[0]).to(x.dtype)
        out = model.denoiser(
            hidden_states=tokens,
            timestep=timestep / 1000,
            guidance=step.timestep_cond,
            pooled_projections=step.added_cond_kwargs["pooled_projections"],
            encoder_hidden_states=step.encoder_hidden_states,
            txt_ids=step.added_cond_kwargs["txt_ids"],
            img_ids=latent_image_ids(h // 2, w // 2, x.device, x.dtype),
            return_dict=False,
            **step.block_residuals,  # ControlNet residuals (controlnet_dit.py), none without one
        )[0]
        return unpack(out, h, w)

    # ---- schedulers
    def sigmas(self, steps: int):
        return np.linspace(1.0, 1 / steps, steps)

    def shift_mu(self, model, latent_size):
        if latent_size is None:
            return None
        seq_len = (int(latent_size[0]) // 2) * (int(latent_size[1]) // 2)
        return calculate_shift(seq_len, dict(model.scheduler_config), self.default_max_shift)


def is_control_config(config: dict) -> bool:
    """A FLUX.1 Canny/Depth dev transformer config: in = 2 * out (packed latents, control latents)."""
    in_channels = int(config.get("in_channels", 64))
    out_channels = int(config.get("out_channels") or in_channels)
    return in_channels == 2 * out_channels


def is_fill_config(config: dict) -> bool:
    """A FLUX.1 Fill transformer config: in = 2 * out + 256 (packed latents, masked image, 8x8 mask)."""
    in_channels = int(config.get("in_channels", 64))
    out_channels = int(config.get("out_channels") or in_channels)
    return in_channels == 2 * out_channels + 4 * 64


FLUX_DEV_FAMILY = FluxFamily(DEV, guidance=True, max_sequence_length=512, steps=28,
                             shared_text_variants=(FILL, CONTROL))
FLUX_FILL_FAMILY = FluxFamily(FILL, guidance=True, max_sequence_length=512, steps=50,
                              default_guidance=FILL_GUIDANCE, shared_text_variants=(DEV, CONTROL))
# Canny/Depth dev: dev's text encoders and guidance embedding; 50 steps as BFL's examples.
FLUX_CONTROL_FAMILY = FluxFamily(CONTROL, guidance=True, max_sequence_length=512, steps=50,
                                 default_guidance=CONTROL_GUIDANCE, shared_text_variants=(DEV, FILL))
FLUX_SCHNELL_FAMILY = FluxFamily(SCHNELL, guidance=False, max_sequence_length=256, steps=4)
