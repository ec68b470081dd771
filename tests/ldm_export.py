"""Write tiny test components the way real checkpoints are distributed.

No real weights can be downloaded here, so the tests export the tiny models of
`tiny_models.py` as (a) single .safetensors files in the original LDM / A1111
key layout and (b) diffusers folders. The LDM key mapping comes from
ComfyUI's own converters (`comfy.utils.unet_to_diffusers`,
`comfy.diffusers_convert`), which ComfyUI also uses to save checkpoints, so the
files follow the layout real-world tools read and write, independently of the
diffusers converters the loader uses. A few non-model keys that real files
carry (position ids, logit scale, the noise schedule) are added too, so the
loader is shown to ignore them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer."
SDXL_CLIP_L = "conditioner.embedders.0.transformer."
SDXL_CLIP_G = "conditioner.embedders.1.model."
REFINER_CLIP_G = "conditioner.embedders.0.model."  # the SDXL refiner's only text encoder


def _comfy():
    """Import ComfyUI's converters from the tree the tests run against."""
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        raise RuntimeError("COMFYUI_PATH is not set; run the tests through `make test`")
    if root not in sys.path:
        sys.path.append(root)
    import comfy.diffusers_convert
    import comfy.utils

    return comfy.utils, comfy.diffusers_convert


def _ldm_unet_layout(config) -> dict:
    """ComfyUI's (LDM) UNet description of a diffusers UNet config."""
    channels = list(config.block_out_channels)
    levels = len(channels)
    layers = config.layers_per_block
    depth = config.transformer_layers_per_block
    depth = [depth] * levels if isinstance(depth, int) else list(depth)
    has_attn = ["CrossAttn" in t for t in config.down_block_types]
    per_level = [d if a else 0 for d, a in zip(depth, has_attn)]
    return {
        "num_res_blocks": [layers] * levels,
        "channel_mult": [c // channels[0] for c in channels],
        "transformer_depth": [d for d in per_level for _ in range(layers)],
        "transformer_depth_output": [d for d in per_level for _ in range(layers + 1)],
        "transformer_depth_middle": depth[-1],
    }


def unet_to_ldm(unet) -> dict:
    utils, _ = _comfy()
    mapping = utils.unet_to_diffusers(_ldm_unet_layout(unet.config))
    state = unet.state_dict()
    missing = sorted(set(state) - set(mapping))
    if missing:
        raise AssertionError(f"no LDM name for UNet keys {missing[:5]}")
    return {UNET + mapping[k]: v for k, v in state.items()}


def vae_to_ldm(vae) -> dict:
    _, convert = _comfy()
    return {VAE + k: v for k, v in convert.convert_vae_state_dict(vae.state_dict()).items()}


def hf_text_state_dict(text_encoder) -> dict:
    """The encoder's weights in the usual HF layout (`text_model.` included).

    transformers 5 saves CLIPTextModel without the `text_model.` level;
    checkpoints in the wild (and transformers 4) have it.
    """
    out = {}
    for key, value in text_encoder.state_dict().items():
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[key] = value
    return out


def clip_to_ldm(text_encoder, prefix: str) -> dict:
    """CLIP-L keeps the HF layout under its prefix (as in real SD1/SDXL files)."""
    out = {prefix + k: v for k, v in hf_text_state_dict(text_encoder).items()}
    positions = text_encoder.config.max_position_embeddings
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(positions).expand((1, -1))
    return out


def open_clip_to_ldm(text_encoder, prefix: str = SDXL_CLIP_G) -> dict:
    """The OpenCLIP layout of SDXL's second encoder (fused qkv, transposed projection)."""
    _, convert = _comfy()
    state = {"transformer." + k: v for k, v in hf_text_state_dict(text_encoder).items()}
    out = {prefix + k: v for k, v in convert.convert_text_enc_state_dict_v20(state).items()}
    out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


def _schedule_buffers() -> dict:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return {"betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()}


def _save(tensors: dict, path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(path))
    return path


def save_sd1_single_file(components: dict, path) -> Path:
    """An SD1.x checkpoint file from `tiny_sd1_components()`."""
    tensors = {}
    tensors.update(unet_to_ldm(components["unet"]))
    tensors.update(vae_to_ldm(components["vae"]))
    tensors.update(clip_to_ldm(components["text_encoder"], SD1_CLIP))
    tensors.update(_schedule_buffers())
    return _save(tensors, path)


def save_sdxl_single_file(components: dict, path) -> Path:
    """An SDXL base checkpoint file from `tiny_sdxl_components()`."""
    tensors = {}
    tensors.update(unet_to_ldm(components["unet"]))
    tensors.update(vae_to_ldm(components["vae"]))
    tensors.update(clip_to_ldm(components["text_encoder"], SDXL_CLIP_L))
    tensors.update(open_clip_to_ldm(components["text_encoder_2"]))
    tensors.update(_schedule_buffers())
    return _save(tensors, path)


def save_sdxl_refiner_single_file(components: dict, path) -> Path:
    """An SDXL refiner checkpoint file (sd_xl_refiner_1.0's layout) from
    `tiny_sdxl_refiner_components()`: bigG alone, as embedder 0."""
    tensors = {}
    tensors.update(unet_to_ldm(components["unet"]))
    tensors.update(vae_to_ldm(components["vae"]))
    tensors.update(open_clip_to_ldm(components["text_encoder_2"], REFINER_CLIP_G))
    tensors.update(_schedule_buffers())
    return _save(tensors, path)


def save_diffusers_folder(pipeline, path) -> Path:
    """A diffusers pipeline folder (model_index.json, one folder per component)."""
    path = Path(path)
    pipeline.save_pretrained(str(path), safe_serialization=True)
    return path
