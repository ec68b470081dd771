"""Stable Diffusion 1.x: one CLIP-L encoder, a UNet without added conditioning.

clip_skip counts as in A1111 (1 = last layer): 1 is the encoder's output,
n > 1 is hidden_states[-n] through the final layer norm (diffusers'
clip_skip = n - 1). No pooled embedding, no micro-conditioning.
"""
from __future__ import annotations

from ..components import SD1
from . import facts
from .base import EncoderSlot, LatentFormat
from .unet import UNetFamily, final_layer_norm


class SD1Family(UNetFamily):
    key = "sd1"
    family = SD1
    label = facts.FAMILY_LABELS[SD1]
    short_label = "SD1.x"
    log_name = "sd1"

    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
    text_encoders = (EncoderSlot("text_encoder", "tokenizer", "CLIPTextModel"),)

    latent_format = LatentFormat(channels=4, scaling_factor=0.18215, preview="SD15", native_size=512)

    def encoder_output(self, index, encoder, ids, clip_skip):
        if clip_skip == 1:
            return encoder(ids)[0], None
        output = encoder(ids, output_hidden_states=True)
        return final_layer_norm(encoder)(output.hidden_states[-clip_skip]), None


SD1_FAMILY = SD1Family()
