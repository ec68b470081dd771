"""Stable Diffusion 3 / 3.5: CLIP-L + CLIP-G + T5, a joint (MMDiT) transformer.

Encoding is StableDiffusion3Pipeline.encode_prompt: both CLIPs give their
penultimate hidden states (clip_skip 1; n: hidden_states[-(n + 1)]) of a
77-token window, concatenated on the feature axis and zero-padded to T5's
width; T5 gives `max_sequence_length` tokens (256 by default) and the two
are concatenated along the sequence (77 + 256 tokens). The pooled embedding
is CLIP-L's projection next to CLIP-G's (2048 wide for the real models).
A folder without T5 (model_index lists text_encoder_3 as null) gets zeros in
its place, as diffusers does.

Sampling: FlowMatchEulerDiscrete with the folder's shift (3.0); mu from the
image token count only when the scheduler config asks for dynamic shifting.
CFG batches [negative, positive] when cfg > 1 (the pipeline's
do_classifier_free_guidance).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..components import SD3, ModelBundle, compute_dtype
from .base import DenoiserInputs, EncoderSlot, LatentFormat
from ..window_prompt import prompt_ids, window_prompt
from .flow import FlowFamily, calculate_shift

CLIP_L = EncoderSlot("text_encoder", "tokenizer", "CLIPTextModelWithProjection")
CLIP_G = EncoderSlot("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", embedding_key="clip_g")
T5 = EncoderSlot("text_encoder_3", "tokenizer_3", "T5EncoderModel", tokenizer_class="T5TokenizerFast",
                 window=256, embedding_key="t5", optional=True)


class SD3Family(FlowFamily):
    key = "sd3"
    family = SD3
    label = "Stable Diffusion 3"
    short_label = "SD3"
    log_name = "sd3"

    pipeline_classes = (
        "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline",
    )
    denoiser_class = "SD3Transformer2DModel"
    text_encoders = (CLIP_L, CLIP_G, T5)
    default_max_shift = 1.16  # StableDiffusion3Pipeline's calculate_shift default
    default_cfg = 7.0
    default_steps = 28
    latent_format = LatentFormat(
        channels=16, scaling_factor=1.5305, shift_factor=0.0609, preview="SD3", native_size=1024
    )

    # ---- encode
    def encode_prompt(self, bundle, text, *, clip_skip=1, embeddings=None, max_sequence_length=None, **options):
        from ..components import Conditioning
        from ..text_encoding import apply_emphasis, encoder_device, patches_applied

        self.check_text_bundle(bundle, text, embeddings)
        length = self.check_max_sequence_length(max_sequence_length or self.default_max_sequence_length)
        prompt = window_prompt(text, self.short_label)
        (tok_l, tok_g, tok_t5), (enc_l, enc_g, enc_t5) = bundle.tokenizers, bundle.text_encoders
        with torch.no_grad(), patches_applied(bundle):  # the text encoders' LoRA, for this encode
            hidden, pooled = [], []
            for tokenizer, encoder in ((tok_l, enc_l), (tok_g, enc_g)):
                layer = self.clip_skip_layer(clip_skip, encoder)
                ids, weights = prompt_ids(tokenizer, prompt, int(tokenizer.model_max_length), "CLIP")
                out = encoder(ids.to(encoder_device(encoder)), output_hidden_states=True)
                states = out.hidden_states[layer]
                states = states if weights is None else apply_emphasis(states, weights)
                hidden.append(states.to(dtype=compute_dtype(enc_l)))
                pooled.append(out[0])
            clip = torch.cat(hidden, dim=-1)
            if enc_t5 is None:
                width = int(bundle.joint_width)
                t5 = torch.zeros((1, length, width), device=clip.device, dtype=compute_dtype(enc_l))
            else:
                t5 = self.t5_sequence(tok_t5, enc_t5, prompt, length).to(dtype=compute_dtype(enc_t5))
            clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
            embeds = torch.cat([clip, t5.to(clip.device)], dim=-2)
            pooled = torch.cat(pooled, dim=-1)
        return Conditioning(
            family=bundle.family, embeds=embeds, empty_chunk=embeds[:, :0], pooled=pooled, variant=bundle.variant,
        )

    # ---- predict
    def denoiser_inputs(self, model, positive, negative, cfg, batch, pixel_size, device, **options) -> DenoiserInputs:
        do_cfg = cfg > 1.0
        if do_cfg and negative is None:
            raise ValueError(f"cfg is {cfg} but no negative conditioning was given: connect one or set cfg to 1")
        dtype = model.dtype
        embeds = self.cfg_batch(positive, negative, do_cfg, batch, "embeds", device, dtype)
        pooled = self.cfg_batch(positive, negative, do_cfg, batch, "pooled", device, dtype)
        return DenoiserInputs(embeds, {"pooled_projections": pooled}, None, do_cfg)

    def predict(self, model: ModelBundle, step) -> torch.Tensor:
        return model.denoiser(
            hidden_states=step.x_in,
            timestep=step.timestep.expand(step.x_in.shape[0]),
            encoder_hidden_states=step.encoder_hidden_states,
            pooled_projections=step.added_cond_kwargs["pooled_projections"],
            return_dict=False,
            **step.block_residuals,  # ControlNet residuals (controlnet_dit.py), none without one
        )[0]

    # ---- schedulers
    def shift_mu(self, model, latent_size):
        config = dict(model.scheduler_config)
        if not config.get("use_dynamic_shifting") or latent_size is None:
            return None
        patch = self.latent_multiple(model)
        seq_len = (int(latent_size[0]) // patch) * (int(latent_size[1]) // patch)
        return calculate_shift(seq_len, config, self.default_max_shift)


SD3_FAMILY = SD3Family()
