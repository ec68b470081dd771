"""Tiny FLUX.1 and SD3/SD3.5 components built in code, shaped like the real families.

Sizes follow the real models' structure where the single-file loader reads
facts from it (Flux: 16-wide rotary heads split (4, 4, 8); SD3: 64-wide heads
with as many heads as joint blocks, as Stability sizes MMDiTs; the real
scheduler and VAE scaling/shift factors) and are otherwise as small as a CPU
test wants. CLIP-L is narrower than CLIP-G (32 vs 64), as 768 vs 1280 in the
real encoders, which is how the split loader tells them apart.
"""
from __future__ import annotations

import torch

from tiny_models import _text_config, clip_tokenizer, comfyui_root

LATENT = 4


def t5_tokenizer():
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(
        str(comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer"), model_max_length=512
    )


def tokenizer_dirs() -> dict:
    root = comfyui_root() / "comfy"
    return {"clip": str(root / "sd1_tokenizer"), "t5": str(root / "text_encoders" / "t5_tokenizer")}


def tiny_t5(d_model: int, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(
        vocab_size=32128, d_model=d_model, d_ff=37, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6, dropout_rate=0.1, is_encoder_decoder=True, tie_word_embeddings=False,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ))


def tiny_dit_vae(scaling: float, shift: float, seed: int = 0, latent: int = LATENT):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[8, 16, 32, 32], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=latent, norm_num_groups=8, layers_per_block=1, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=scaling, shift_factor=shift,
        force_upcast=True,
    )


def _scheduler(**config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def _evaluating(components: dict) -> dict:
    """Modules in eval mode, as from_pretrained gives them (T5's dropout is off)."""
    for value in components.values():
        if isinstance(value, torch.nn.Module):
            value.eval()
    return components


def tiny_flux_components(variant: str = "dev", seed: int = 0, latent: int = LATENT) -> dict:
    """FluxPipeline components; variant dev, schnell, fill or control (Canny/Depth dev). latent: VAE
    channels (16 as the real FLUX.1 for graphs that start from ComfyUI's EmptySD3LatentImage)."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel

    packed = latent * 4
    in_channels = {"dev": packed, "schnell": packed, "fill": 2 * packed + 256, "control": 2 * packed}[variant]
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=packed if variant in ("fill", "control") else None,
        num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=variant != "schnell",
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(seed)
    clip = CLIPTextModel(_text_config(32, 32))
    shift = {"dev": (3.0, True), "fill": (3.0, True), "control": (3.0, True), "schnell": (1.0, False)}[variant]
    return _evaluating({
        "scheduler": _scheduler(
            base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
            num_train_timesteps=1000, shift=shift[0], use_dynamic_shifting=shift[1],
        ),
        "vae": tiny_dit_vae(0.3611, 0.1159, seed, latent),
        "text_encoder": clip,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": tiny_t5(32, seed),
        "tokenizer_2": t5_tokenizer(),
        "transformer": transformer,
        "image_encoder": None,
        "feature_extractor": None,
    })


def tiny_sd3_components(variant: str = "sd3_medium", seed: int = 0, latent: int = LATENT) -> dict:
    """StableDiffusion3Pipeline components; variant sd3_medium, sd35_medium or sd35_large; latent as for Flux."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=latent, out_channels=latent, num_layers=2,
        attention_head_dim=64, num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=128,
        pooled_projection_dim=96, pos_embed_max_size=16,
        dual_attention_layers=(0,) if variant == "sd35_medium" else (),
        qk_norm=None if variant == "sd3_medium" else "rms_norm",
    )
    torch.manual_seed(seed)
    clip_l = CLIPTextModelWithProjection(_text_config(32, 32))
    clip_g_config = _text_config(64, 64)
    # 8-wide heads, the test-scale rule a loader reads back (families.facts.text_attention_heads).
    clip_g_config.num_attention_heads = 8
    clip_g = CLIPTextModelWithProjection(clip_g_config)
    return _evaluating({
        "transformer": transformer,
        "scheduler": _scheduler(num_train_timesteps=1000, shift=3.0),
        "vae": tiny_dit_vae(1.5305, 0.0609, seed, latent),
        "text_encoder": clip_l,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": clip_g,
        "tokenizer_2": clip_tokenizer(pad_token="!"),
        "text_encoder_3": tiny_t5(96, seed),
        "tokenizer_3": t5_tokenizer(),
        "image_encoder": None,
        "feature_extractor": None,
    })
