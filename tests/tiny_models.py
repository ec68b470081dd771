"""Tiny SD1.x, SDXL and SDXL refiner components built in code, shared by every test layer.

No weights can be downloaded here, so tests build random-weight models with a
fixed seed, shaped like the real families (same block types, same conditioning
paths), small enough to run a denoising step in milliseconds on a CPU. The
tokenizer is the real CLIP BPE vocabulary that ComfyUI ships, so prompts are
tokenized exactly as real checkpoints tokenize them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def comfyui_root() -> Path:
    """The ComfyUI tree the tests run against (set by the Makefile)."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        raise RuntimeError("COMFYUI_PATH is not set; run the tests through `make test`")
    return Path(root)


def tokenizer_dir() -> Path:
    return comfyui_root() / "comfy" / "sd1_tokenizer"


def clip_tokenizer(pad_token: str | None = None):
    from transformers import CLIPTokenizer

    # ComfyUI's copy says model_max_length 8192; CLIP's real window is 77.
    kwargs = {"model_max_length": 77}
    if pad_token:
        kwargs["pad_token"] = pad_token
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), **kwargs)


def _text_config(hidden: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=hidden,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=49408,
        hidden_act="gelu",
        projection_dim=projection,
        max_position_embeddings=77,
    )


def tiny_vae(seed: int = 0, latent_channels: int = 4, **config):
    """A 4-level VAE (8x downscale, as the real one) with 4 latent channels (16 and a shift for SD3 / Flux)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[8, 16, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
        **config,
    )


def tiny_scheduler():
    from diffusers import DDIMScheduler

    # The real SD1.5 / SDXL scheduler configuration.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        num_train_timesteps=1000,
    )


def tiny_sd1_components(seed: int = 0, in_channels: int = 4, block_out_channels: tuple = (32, 64)) -> dict:
    """Components for StableDiffusionPipeline (in_channels=9 for inpainting; wider
    block_out_channels for a bigger UNet, e.g. when memory must be measurable)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=block_out_channels,
        layers_per_block=2,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = tiny_vae(seed)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(32, 32))
    return {
        "unet": unet,
        "scheduler": tiny_scheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sdxl_components(seed: int = 0, in_channels: int = 4) -> dict:
    """Components for StableDiffusionXLPipeline: two text encoders, text_time."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 time ids + 32 pooled
        cross_attention_dim=64,  # 32 + 32 from the two encoders
        norm_num_groups=1,
    )
    vae = tiny_vae(seed)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(32, 32))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(32, 32))
    return {
        "unet": unet,
        "scheduler": tiny_scheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": clip_tokenizer(pad_token="!"),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sdxl_refiner_components(seed: int = 0) -> dict:
    """Components for StableDiffusionXLImg2ImgPipeline as Stability's refiner: bigG only.

    Shaped like sd_xl_refiner_1.0: four levels whose outer two have no
    attention, one transformer depth everywhere, text from the OpenCLIP bigG
    encoder alone (cross-attention = its hidden size) and 5 time ids
    (original size, crop top-left, aesthetic score), as diffusers' own refiner
    test components (projection_class_embeddings_input_dim = 5 * 8 + 32).
    The VAE and the bigG encoder equal those of `tiny_sdxl_components(seed)`,
    as the real refiner shares SDXL base's latent space and bigG, so a base
    run hands off to it.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(1, 2, 2, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=2,
        projection_class_embeddings_input_dim=72,  # 5 * 8 time ids + 32 pooled
        cross_attention_dim=32,  # bigG alone
        norm_num_groups=1,
    )
    vae = tiny_vae(seed)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(32, 32))
    return {
        "unet": unet,
        "scheduler": tiny_scheduler(),
        "vae": vae,
        "text_encoder": None,
        "tokenizer": None,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": clip_tokenizer(pad_token="!"),
        "image_encoder": None,
        "feature_extractor": None,
    }


def sdxl_refiner_pipeline(seed: int = 0, components: dict | None = None):
    """The refiner as diffusers ships it: Img2Img, aesthetic score, no zeroed empty negative."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline(
        **(components or tiny_sdxl_refiner_components(seed)),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def sd1_pipeline(seed: int = 0):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**tiny_sd1_components(seed), requires_safety_checker=False)


def sdxl_pipeline(seed: int = 0):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**tiny_sdxl_components(seed))
