"""Stable Diffusion XL (base): CLIP-L + OpenCLIP bigG, pooled text and size time ids.

Both encoders give hidden_states[-(clip_skip + 1)] without the final layer
norm (1 = penultimate, as diffusers' SDXL), concatenated on the feature axis;
the pooled embedding is bigG's projection (text_embeds) of the first chunk.
The UNet's added conditioning is that pooled embedding plus six time ids:
original size, crop top-left and target size (diffusers' _get_add_time_ids),
each prompt with its own (DSSDXLSizeConditioning), defaulting to the size
being generated and no crop.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..components import SDXL, Conditioning, ModelBundle
from . import facts
from .base import EncoderSlot, LatentFormat
from .unet import UNetFamily, per_sample

CLIP_L = EncoderSlot("text_encoder", "tokenizer", "CLIPTextModel")
# The aesthetic scores a 5-time-id UNet (the refiner) gets when a prompt carries
# none (DSSDXLAestheticScore sets one): diffusers' defaults for the positive
# and the negative prompt.
DEFAULT_AESTHETIC_SCORE = 6.0
DEFAULT_NEGATIVE_AESTHETIC_SCORE = 2.5

# bigG's tokenizer (SDXL's tokenizer_2, the refiner's only one) pads with "!".
OPENCLIP_BIGG = EncoderSlot("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", pad_token="!",
                            embedding_key="clip_g")


class SDXLFamily(UNetFamily):
    key = "sdxl"
    family = SDXL
    label = facts.FAMILY_LABELS[SDXL]
    short_label = "SDXL"
    log_name = "sdxl"

    pipeline_classes = (
        "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
    )
    text_encoders = (CLIP_L, OPENCLIP_BIGG)

    pooled = True
    size_conditioning = True
    target_size = True
    default_time_ids = 6  # original size + crop top-left + target size

    latent_format = LatentFormat(channels=4, scaling_factor=0.13025, preview="SDXL", native_size=1024)

    # ---- load
    def keep_vae_float32(self, vae, dtype: torch.dtype) -> bool:
        # The SDXL VAE overflows in float16 (black or NaN images); diffusers'
        # SDXL pipelines upcast it around every decode. Keeping it float32 once
        # is the same result without changing a shared module's dtype at each call.
        return dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))

    # ---- encode
    def encoder_output(self, index, encoder, ids, clip_skip):
        output = encoder(ids, output_hidden_states=True)
        pooled = getattr(output, "text_embeds", None)
        if pooled is None:
            pooled = getattr(output, "pooler_output", None)
        return output.hidden_states[-(clip_skip + 1)], pooled

    def check_conditioning(self, model: ModelBundle, cond: Conditioning, which: str, model_label: str) -> None:
        super().check_conditioning(model, cond, which, model_label)
        if cond.pooled is None:
            raise ValueError(
                f"{which} conditioning has no pooled embedding, which {model_label} needs: "
                "encode the prompt with an SDXL text encoder"
            )

    # ---- predict
    def time_ids(self, cond: Conditioning, pixel_size: tuple[int, int], aesthetic_score: Optional[float] = None):
        """Micro-conditioning: original size + crop top-left + target size.

        With `aesthetic_score` (the refiner's 5 time ids, diffusers'
        requires_aesthetics_score): original size + crop top-left + aesthetic
        score; the score the prompt carries (size_conditioning["aesthetic_score"]) wins.
        """
        sc = cond.size_conditioning or {}
        original = tuple(int(v) for v in sc.get("original_size", pixel_size))
        crop = tuple(int(v) for v in sc.get("crop", (0, 0)))
        if aesthetic_score is not None:
            return list(original + crop) + [float(sc.get("aesthetic_score", aesthetic_score))]
        target = tuple(int(v) for v in sc.get("target_size", pixel_size))
        return list(original + crop + target)

    def time_id_count(self, model: ModelBundle, pooled_dim: int, model_label: str = "") -> int:
        """How many time ids the UNet's added embedding takes: 6 (SDXL base) or 5 (refiner).

        Read from the UNet itself (diffusers' _get_add_time_ids check), so a
        model is conditioned the way its weights expect whatever it was
        loaded as; the family decides only when the UNet does not tell.
        """
        unet = model.unet
        default = self.default_time_ids
        time_dim = getattr(unet.config, "addition_time_embed_dim", None)
        linear = getattr(getattr(unet, "add_embedding", None), "linear_1", None)
        if time_dim is None or linear is None:
            return default
        expected = int(linear.in_features)
        for count in (default, 5 if default == 6 else 6):
            if int(time_dim) * count + pooled_dim == expected:
                return count
        raise ValueError(
            f"{model_label} expects {expected} values of pooled + size conditioning but the "
            f"conditioning gives {int(time_dim) * default + pooled_dim} ({pooled_dim} pooled + {default} time ids "
            f"x {int(time_dim)}): encode the prompt with this checkpoint's text encoders"
        )

    def added_cond_kwargs(self, model, conds, batch, pixel_size, device, dtype, model_label: str = "") -> dict:
        """bigG's pooled embedding and the time ids, one row per CFG row ([negative, positive]).

        A 5-time-id UNet takes each prompt's own aesthetic score, else the
        defaults (6 for the positive rows, 2.5 for the negative ones).
        """
        aesthetic = self.time_id_count(model, int(conds[-1].pooled.shape[-1]), model_label) == 5
        scores = [DEFAULT_NEGATIVE_AESTHETIC_SCORE, DEFAULT_AESTHETIC_SCORE][-len(conds):]
        text_embeds = torch.cat([per_sample(c.pooled, batch, "pooled") for c in conds])
        time_ids = torch.cat(
            [
                torch.tensor([self.time_ids(c, pixel_size, score if aesthetic else None)], dtype=dtype).repeat(batch, 1)
                for c, score in zip(conds, scores)
            ]
        )
        return {
            "text_embeds": text_embeds.to(device=device, dtype=dtype),
            "time_ids": time_ids.to(device=device),
        }


SDXL_FAMILY = SDXLFamily()
