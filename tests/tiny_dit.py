"""Tiny SD3 and Flux.1 (dev, schnell) components built in code.

Shaped like the real families (three / two text encoders including T5, a
joint transformer, a 16-channel VAE with a shift factor, the real scheduler
configs) and small enough for a CPU test. The CLIP tokenizer is ComfyUI's
real CLIP vocabulary, the T5 tokenizer ComfyUI's real T5 tokenizer
(comfy/text_encoders/t5_tokenizer), so prompts tokenize as with real
checkpoints; the tiny T5 keeps T5's 32128-token vocabulary for that reason.
"""
from __future__ import annotations

import inspect

import torch

from tiny_models import _text_config, clip_tokenizer, comfyui_root, tiny_vae, tokenizer_dir


def t5_tokenizer():
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(comfyui_root() / "comfy" / "text_encoders" / "t5_tokenizer"))


def tiny_t5(seed: int = 0, d_model: int = 48):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(
        T5Config(
            vocab_size=32128, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1, feed_forward_proj="relu", dropout_rate=0.0,
        )
    )


def tiny_vae16(seed: int = 0, scaling_factor: float = 1.5305, shift_factor: float = 0.0609):
    """The tiny VAE with 16 latent channels and a shift factor, no quant convs (SD3 / Flux)."""
    return tiny_vae(seed, latent_channels=16, scaling_factor=scaling_factor, shift_factor=shift_factor,
                    use_quant_conv=False, use_post_quant_conv=False)


def sd3_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def flux_scheduler(dev: bool = True):
    from diffusers import FlowMatchEulerDiscreteScheduler

    # The real FLUX.1-dev / -schnell scheduler configs.
    if dev:
        return FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
        )
    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False,
    )


def tiny_sd3_components(seed: int = 0, with_t5: bool = True) -> dict:
    """StableDiffusion3Pipeline components: CLIP-L (32) + CLIP-G (48) hidden states padded to T5's 96."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=96, pooled_projection_dim=64,
    )
    torch.manual_seed(seed)
    clip_l = CLIPTextModelWithProjection(_text_config(32, 32))
    torch.manual_seed(seed + 1)
    clip_g = CLIPTextModelWithProjection(_text_config(48, 32))
    return {
        "transformer": transformer,
        "scheduler": sd3_scheduler(),
        "vae": tiny_vae16(seed),
        "text_encoder": clip_l,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": clip_g,
        "tokenizer_2": clip_tokenizer(pad_token="!"),
        "text_encoder_3": tiny_t5(seed, d_model=96) if with_t5 else None,
        "tokenizer_3": t5_tokenizer() if with_t5 else None,
    }


# FLUX.1 Fill's transformer input per packed token, as FluxFillPipeline builds it:
# 16 latent channels x 2x2 (64) + the masked image's (64) + the 8x8 pixel mask of
# each of the 2x2 latent pixels (4 * 64 = 256); it predicts the 64 latent ones.
FILL_IN_CHANNELS = 2 * 16 * 4 + 4 * 8 * 8


def tiny_flux_components(seed: int = 0, dev: bool = True, fill: bool = False, control: bool = False) -> dict:
    """FluxPipeline components: CLIP-L pooled (32) + T5 (48); dev with a guidance embedding.

    fill: FLUX.1 Fill's wider transformer input (FILL_IN_CHANNELS in, 64 out).
    control: FLUX.1 Canny/Depth dev's doubled input (128 in: latents + control latents, 64 out).
    """
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=FILL_IN_CHANNELS if fill else 128 if control else 64,
        out_channels=64 if fill or control else None, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=48, pooled_projection_dim=32,
        guidance_embeds=dev or fill or control,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(seed)
    clip_l = CLIPTextModel(_text_config(32, 32))
    return {
        "transformer": transformer,
        "scheduler": flux_scheduler(dev),
        "vae": tiny_vae16(seed, scaling_factor=0.3611, shift_factor=0.1159),
        "text_encoder": clip_l,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": tiny_t5(seed, d_model=48),
        "tokenizer_2": t5_tokenizer(),
    }


def sd3_pipeline(seed: int = 0, with_t5: bool = True):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(**tiny_sd3_components(seed, with_t5))


def flux_pipeline(seed: int = 0, dev: bool = True):
    from diffusers import FluxPipeline

    return FluxPipeline(**tiny_flux_components(seed, dev), image_encoder=None, feature_extractor=None)


def _randomize(module, seed: int, scale: float = 0.05):
    """ControlNets zero-initialise their output blocks (a fresh one adds nothing); give every weight a value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return module.eval()


def tiny_flux_controlnet(seed: int = 0, dev: bool = True, num_mode=None, xlabs: bool = False):
    """A FluxControlNetModel fitting tiny_flux_components (InstantX layout; Union with num_mode).

    xlabs: XLabs' layout, a pixel hint through an input_hint_block; its patch_size 2
    unfolds that block's 16 channels into the 64 of a packed token, and double blocks
    only, as in XLabs' config.
    """
    from diffusers import FluxControlNetModel

    model = FluxControlNetModel(
        patch_size=2 if xlabs else 1, in_channels=64, num_layers=1, num_single_layers=0 if xlabs else 1,
        attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=48, pooled_projection_dim=32, guidance_embeds=dev,
        axes_dims_rope=[4, 4, 8], num_mode=num_mode, conditioning_embedding_channels=16 if xlabs else None,
    )
    return _randomize(model, seed)


def tiny_sd3_controlnet(seed: int = 0, force_zeros_for_pooled_projection: bool = True):
    """An SD3ControlNetModel fitting tiny_sd3_components (InstantX style pools zeros by default)."""
    from diffusers import SD3ControlNetModel

    model = SD3ControlNetModel(
        sample_size=32, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=96, caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
        force_zeros_for_pooled_projection=force_zeros_for_pooled_projection,
    )
    return _randomize(model, seed)


def narrow_posterior(vae):
    """Put the VAE's log-variance at diffusers' clamp (std ~3e-7): a near-deterministic posterior.

    StableDiffusion3ControlNetPipeline samples the hint's posterior with torch's
    global RNG, which no seed reproduces; with this VAE its draw equals the mean
    to well below the parity tolerance, so a test can compare everything else.
    """
    conv = vae.encoder.conv_out  # [mean | logvar]
    half = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[half:] = 0.0
        conv.bias[half:] = -100.0
    return vae


def flux_fill_pipeline(seed: int = 0):
    from diffusers import FluxFillPipeline

    return FluxFillPipeline(**tiny_flux_components(seed, fill=True))


def flux_control_pipeline(seed: int = 0):
    """FLUX.1 Canny/Depth dev in miniature: FluxControlPipeline with a 128-wide transformer input."""
    from diffusers import FluxControlPipeline

    return FluxControlPipeline(**tiny_flux_components(seed, control=True))


def sd35_canny_image_processor(vae_scale_factor: int):
    """The image processor the SD3.5-Large canny model card gives the pipeline: no -1..1
    normalisation, then pixels * 255 * 0.5 + 0.5 (Stability's sd3_infer for control_type 1);
    pictures are denormalised as usual on the way out."""
    from diffusers.image_processor import VaeImageProcessor

    class CannyProcessor(VaeImageProcessor):
        def preprocess(self, image, **kwargs):
            return super().preprocess(image, **kwargs) * 255 * 0.5 + 0.5

        def postprocess(self, image, output_type="pil", do_denormalize=None):
            return super().postprocess(image, output_type=output_type, do_denormalize=[True] * image.shape[0])

    return CannyProcessor(vae_scale_factor=vae_scale_factor, do_normalize=False)


def pipeline_of(pipe_cls, bundles, controlnet=None):
    """A diffusers flow pipeline over the pack's loaded (model, text encoder, vae) bundles: the same modules.

    controlnet: the ControlNet module for the ControlNet pipelines."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model, text_encoder, vae = bundles
    parts = {
        "transformer": model.unet,
        "vae": vae.vae,
        "scheduler": FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
    }
    names = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3")]
    for (enc_name, tok_name), enc, tok in zip(names, text_encoder.text_encoders, text_encoder.tokenizers):
        parts[enc_name], parts[tok_name] = enc, tok
    if controlnet is not None:
        parts["controlnet"] = controlnet
    if "image_encoder" in inspect.signature(pipe_cls.__init__).parameters:  # FluxPipeline's IP-Adapter slots
        parts.update(image_encoder=None, feature_extractor=None)
    pipe = pipe_cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


_LOADED: dict = {}


def load_cached(folder):
    """Loads a saved tiny pipeline folder once per test process: the unit tests that share folders share the load."""
    from diffusers_studio.nodes.engine.loading import load_checkpoint
    key = str(folder)
    if key not in _LOADED:
        _LOADED[key] = load_checkpoint(folder, dtype="float32", tokenizer_dir=tokenizer_dir())
    return _LOADED[key]
