"""Tiny FLUX.1 Fill and Canny dev split files, Flux / SD3.5 ControlNet folders for the DiT canvas workflows.

`write()` (called by `harness.models.write_concept_models`) puts, under the
real names users download:

* `diffusion_models/flux1-fill-dev.safetensors` (BFL's transformer-only FLUX.1
  Fill dev file, original key layout) with `text_encoders/clip_l.safetensors`,
  `text_encoders/t5xxl_fp16.safetensors` and `vae/ae.safetensors`: how BFL and
  ComfyUI ship FLUX.1 split, read by Load Diffusers Split Model;
* `diffusion_models/flux1-canny-dev.safetensors` (BFL's FLUX.1 Canny dev, the
  same layout with a 2x wide input), sharing those encoders and that VAE;
* `controlnet/FLUX.1-dev-Controlnet-Union/`: InstantX's Flux Union ControlNet
  (a diffusers folder, 10 control modes), fitting the tiny `flux1-dev-fp8`
  checkpoint of `models_dit`;
* `controlnet/SD3.5M-Controlnet-Canny/`: Tensor.Art's SD3.5 medium canny
  ControlNet (a diffusers folder), fitting the tiny `sd3.5_medium` checkpoint;
* `ipadapter/flux-ip-adapter.safetensors` (XLabs' Flux.1 IP-Adapter layout)
  fitting the tiny `flux1-dev-fp8` checkpoint, with the CLIP ViT-L/14 encoder it
  reads, `clip_vision/clip-vit-large-patch14.safetensors` (names and writers
  from `models_ip_adapter`), for flux_ipadapter and flux_canvas.

The components are the 16-latent-channel tiny models of `tests/dit_tiny.py`
(the same seed as `models_dit`, so the split encoders and VAE equal the
all-in-one file's); the ControlNets copy the tiny transformers' shapes and get
random weights everywhere (a fresh ControlNet's zero output blocks add nothing).
"""
from __future__ import annotations

from pathlib import Path

from . import models_ip_adapter as ip
from .models_dit import LATENT
from .tests_modules import tests_module

FLUX_FILL = "flux1-fill-dev.safetensors"
FLUX_CANNY = "flux1-canny-dev.safetensors"
CLIP_L = "clip_l.safetensors"
T5XXL = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
FLUX_CONTROLNET_UNION = "FLUX.1-dev-Controlnet-Union"
SD35_CONTROLNET_CANNY = "SD3.5M-Controlnet-Canny"
UNION_MODES = 10  # InstantX Union: canny, tile, depth, blur, pose, gray, low quality (+ reserved)


def _randomized(module, seed: int):
    """Every weight random (tests/tiny_dit.py's rule for its ControlNets)."""
    return tests_module("tiny_dit")._randomize(module, seed)


def flux_controlnet(transformer, seed: int):
    """A FluxControlNetModel (Union) shaped after the tiny Flux dev transformer."""
    from diffusers import FluxControlNetModel

    cfg = transformer.config
    model = FluxControlNetModel(
        patch_size=cfg.patch_size, in_channels=cfg.in_channels, num_layers=1, num_single_layers=1,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.joint_attention_dim, pooled_projection_dim=cfg.pooled_projection_dim,
        guidance_embeds=cfg.guidance_embeds, axes_dims_rope=list(cfg.axes_dims_rope), num_mode=UNION_MODES,
    )
    return _randomized(model, seed)


def sd3_controlnet(transformer, seed: int):
    """An SD3ControlNetModel shaped after the tiny SD3.5 medium transformer, with its pooled-prompt path on."""
    from diffusers import SD3ControlNetModel

    cfg = transformer.config
    model = SD3ControlNetModel(
        sample_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels, num_layers=1,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.joint_attention_dim, caption_projection_dim=cfg.caption_projection_dim,
        pooled_projection_dim=cfg.pooled_projection_dim, out_channels=cfg.out_channels,
        pos_embed_max_size=cfg.pos_embed_max_size, qk_norm=cfg.qk_norm,
        force_zeros_for_pooled_projection=False,
    )
    return _randomized(model, seed)


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    dit_tiny, dit_export = tests_module("dit_tiny"), tests_module("dit_export")
    models_dir = Path(models_dir)
    for kind in ("diffusion_models", "text_encoders", "vae", "controlnet", "ipadapter", "clip_vision"):
        (models_dir / kind).mkdir(parents=True, exist_ok=True)
    fill = dit_tiny.tiny_flux_components("fill", seed, latent=LATENT)
    canny = dit_tiny.tiny_flux_components("control", seed, latent=LATENT)  # same seed: the same encoders and VAE
    dev = dit_tiny.tiny_flux_components("dev", seed, latent=LATENT)
    sd35 = dit_tiny.tiny_sd3_components("sd35_medium", seed, latent=LATENT)
    written = [
        dit_export.save_transformer(fill["transformer"], models_dir / "diffusion_models" / FLUX_FILL),
        dit_export.save_transformer(canny["transformer"], models_dir / "diffusion_models" / FLUX_CANNY),
        dit_export.save_clip(fill["text_encoder"], models_dir / "text_encoders" / CLIP_L),
        dit_export.save_t5(fill["text_encoder_2"], models_dir / "text_encoders" / T5XXL),
        dit_export.save_ae(fill["vae"], models_dir / "vae" / FLUX_VAE),
    ]
    for name, module in (
        (FLUX_CONTROLNET_UNION, flux_controlnet(dev["transformer"], seed + 1)),
        (SD35_CONTROLNET_CANNY, sd3_controlnet(sd35["transformer"], seed + 2)),
    ):
        folder = models_dir / "controlnet" / name
        module.save_pretrained(str(folder), safe_serialization=True)
        written.append(folder)
    encoder = ip.tiny_image_encoder(ip.VIT_L, seed + 3)
    embed = ip.ENCODER_SHAPES[ip.VIT_L]["projection_dim"]
    written.append(ip.save_encoder_single_file(encoder, models_dir / "clip_vision" / ip.VIT_L))
    written.append(ip.save_adapter(ip.flux_adapter_state_dict(dev["transformer"], embed, seed + 4),
                                   models_dir / "ipadapter" / ip.FLUX_IP))
    return written
