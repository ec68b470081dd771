"""Tiny IP-Adapters and CLIP vision encoders under the real file names.

The adapters are written in the published h94 key layout (`image_proj.*`,
`ip_adapter.N.to_k_ip/to_v_ip`, N = 1, 3, 5, ... over the UNet's
cross-attention layers), shaped for the tiny SD1 and SDXL UNets of
`tests/tiny_models.py`, so the loader reads them exactly as it reads the
real releases and diffusers' `load_ip_adapter` reads them too (the unit
parity tests use the same writers). The encoders are transformers-layout
single `.safetensors` files, as ComfyUI users keep them in models/clip_vision.

Random weights: the image prompts have an effect, not a meaning.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .tests_modules import tests_module


SD15_BASE = "ip-adapter_sd15.safetensors"
SD15_PLUS = "ip-adapter-plus_sd15.safetensors"
SD15_PLUS_FACE = "ip-adapter-plus-face_sd15.safetensors"
SDXL_BASE = "ip-adapter_sdxl.safetensors"
VIT_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
VIT_BIGG = "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"
VIT_L = "clip-vit-large-patch14.safetensors"  # what XLabs' Flux IP-Adapter reads
FLUX_IP = "flux-ip-adapter.safetensors"  # XLabs' ip_adapter.safetensors, under a telling name
SIGLIP = "siglip-so400m-patch14-384.safetensors"  # what InstantX's SD3.5 IP-Adapter reads
SD3_IP = "sd35-large-ip-adapter.safetensors"  # InstantX's ip-adapter.bin, as .safetensors
SIGLIP_SHAPE = dict(hidden_size=48, num_attention_heads=1)  # the single-file reader's head rule: 1 below 64 wide

# Tiny stand-ins: different widths so that a mismatched pair is detected.
ENCODER_SHAPES = {
    VIT_H: dict(hidden_size=64, projection_dim=48, num_attention_heads=1),
    VIT_BIGG: dict(hidden_size=128, projection_dim=40, num_attention_heads=2),
    VIT_L: dict(hidden_size=32, projection_dim=24, num_attention_heads=1),
}


def tiny_image_encoder(name: str = VIT_H, seed: int = 0):
    """A CLIPVisionModelWithProjection shaped so the single-file reader infers its config."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    shape = ENCODER_SHAPES[name]
    config = CLIPVisionConfig(
        intermediate_size=37,
        num_hidden_layers=3,
        image_size=32,
        patch_size=8,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        **shape,
    )
    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(config).eval()


def save_encoder_single_file(model, path: Path) -> Path:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def _cross_attention_shapes(unet) -> list[tuple[int, int]]:
    """(inner, cross) of each cross-attention layer, in attention-processor order."""
    shapes = []
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            attn = unet.get_submodule(name[: -len(".processor")])
            shapes.append(tuple(attn.to_k.weight.shape))
    return shapes


def _projection_h94(variant: str, embed: int, cross: int) -> dict:
    """A random projection of `variant`, with h94 key names (no prefix)."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterFullImageProjection, IPAdapterPlusImageProjection

    if variant == "base":
        module = ImageProjection(image_embed_dim=embed, cross_attention_dim=cross, num_image_text_embeds=4)
        return {("proj." + k[len("image_embeds."):]) if k.startswith("image_embeds.") else k: v
                for k, v in module.state_dict().items()}
    if variant == "full-face":
        module = IPAdapterFullImageProjection(image_embed_dim=embed, cross_attention_dim=cross)
        renames = {"ff.net.0.proj.": "proj.0.", "ff.net.2.": "proj.2.", "norm.": "proj.3."}
        out = {}
        for k, v in module.state_dict().items():
            for old, new in renames.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            out[k] = v
        return out
    module = IPAdapterPlusImageProjection(
        embed_dims=embed, output_dims=cross, hidden_dims=64, depth=4, heads=1, num_queries=16
    )
    state = module.state_dict()
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] != "layers":
            out[k] = v
            continue
        i, rest = parts[1], ".".join(parts[2:])
        mapping = {
            "ln0.": "0.norm1.", "ln1.": "0.norm2.", "attn.to_q.": "0.to_q.", "attn.to_out.0.": "0.to_out.",
            "ff.0.": "1.0.", "ff.1.net.0.proj.": "1.1.", "ff.1.net.2.": "1.3.",
        }
        if rest.startswith("attn.to_k."):
            suffix = rest[len("attn.to_k."):]
            out[f"layers.{i}.0.to_kv.{suffix}"] = torch.cat([v, state[f"layers.{i}.attn.to_v.{suffix}"]])
            continue
        if rest.startswith("attn.to_v."):
            continue
        for old, new in mapping.items():
            if rest.startswith(old):
                out[f"layers.{i}.{new}{rest[len(old):]}"] = v
                break
        else:
            raise AssertionError(f"unmapped resampler key {k}")
    return out


def adapter_state_dict(unet, variant: str, embed: int, seed: int = 0) -> dict:
    """A tiny IP-Adapter for `unet` in the h94 layout (flat keys)."""
    torch.manual_seed(seed)
    shapes = _cross_attention_shapes(unet)
    cross = shapes[0][1]
    state = {f"image_proj.{k}": v.contiguous() for k, v in _projection_h94(variant, embed, cross).items()}
    for index, (inner, width) in enumerate(shapes):
        n = 2 * index + 1
        state[f"ip_adapter.{n}.to_k_ip.weight"] = torch.randn(inner, width) * 0.3
        state[f"ip_adapter.{n}.to_v_ip.weight"] = torch.randn(inner, width) * 0.3
    return state


def flux_adapter_state_dict(transformer, embed: int, seed: int = 0) -> dict:
    """A tiny Flux.1 IP-Adapter for `transformer` in XLabs' layout, as FluxPipeline.load_ip_adapter reads it."""
    from diffusers.models.embeddings import ImageProjection

    torch.manual_seed(seed)
    width = int(transformer.config.joint_attention_dim)
    inner = int(transformer.inner_dim)
    module = ImageProjection(image_embed_dim=embed, cross_attention_dim=width, num_image_text_embeds=4)
    state = {}
    for k, v in module.state_dict().items():
        k = ("proj." + k[len("image_embeds."):]) if k.startswith("image_embeds.") else k
        state[f"ip_adapter_proj_model.{k}"] = v.contiguous()
    for i in range(len(transformer.transformer_blocks)):
        for which in ("k", "v"):
            prefix = f"double_blocks.{i}.processor.ip_adapter_double_stream_{which}_proj"
            state[f"{prefix}.weight"] = torch.randn(inner, width) * 0.3
            state[f"{prefix}.bias"] = torch.randn(inner) * 0.1
    return state


def tiny_siglip_encoder(seed: int = 0):
    """A SiglipVisionModel (with its pooling head) shaped so the single-file reader infers its config."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(intermediate_size=37, num_hidden_layers=3, image_size=32, patch_size=8,
                                vision_use_head=True, **SIGLIP_SHAPE)
    torch.manual_seed(seed)
    return SiglipVisionModel(config).eval()


def save_siglip_single_file(model, path: Path) -> Path:
    """The published key layout (vision_model.*), whatever prefix this transformers version gives the tower."""
    from safetensors.torch import save_file

    state = {}
    for k, v in model.state_dict().items():
        if not k.endswith("position_ids"):
            state[k if k.startswith("vision_model.") else "vision_model." + k] = v.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def siglip_processor():
    """The feature_extractor StableDiffusion3Pipeline gets for the tiny SigLIP (its 32-pixel input)."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": 32, "width": 32})


# IPAdapterTimeImageProjectionBlock keys -> InstantX's (the inverse of diffusers' rename).
_SD3_BLOCK_KEYS = (
    ("ln0.", "0.norm1."), ("ln1.", "0.norm2."), ("attn.to_q.", "0.to_q."), ("attn.to_kv.", "0.to_kv."),
    ("attn.to_out.0.", "0.to_out."), ("adaln_norm.", "1.0."), ("ff.net.0.proj.", "1.1."), ("ff.net.2.", "1.3."),
    ("adaln_proj.", "2.1."),
)


def sd3_adapter_state_dict(transformer, embed: int = SIGLIP_SHAPE["hidden_size"], seed: int = 0, *,
                           hidden_dim: int = 64, heads: int = 1, num_queries: int = 4,
                           timestep_in_dim: int = 32) -> dict:
    """An SD3 IP-Adapter for `transformer` in InstantX's layout, as StableDiffusion3Pipeline.load_ip_adapter
    reads it: a 4-block time resampler and one processor per attention layer. The defaults make the tiny
    one (64 wide, 4 queries); InstantX's SD3.5-Large release is 1280 wide, 20 heads, 64 queries, 320 timestep
    channels (the benchmark's full-size adapter). `transformer` may live on the meta device: only its config
    and its attention layers' count are read."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    torch.manual_seed(seed)
    head_dim = int(transformer.config.attention_head_dim)
    inner = head_dim * int(transformer.config.num_attention_heads)
    projection = IPAdapterTimeImageProjection(embed_dim=embed, output_dim=inner, hidden_dim=hidden_dim, heads=heads,
                                              num_queries=num_queries, timestep_in_dim=timestep_in_dim)
    state = {}
    for key, value in projection.state_dict().items():
        parts = key.split(".", 2)
        if parts[0] == "layers":
            rest = parts[2]
            for new, old in _SD3_BLOCK_KEYS:
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
            else:
                raise AssertionError(f"unmapped resampler key {key}")
            key = f"layers.{parts[1]}.{rest}"
        state[f"image_proj.{key}"] = value
    for index in range(len(transformer.attn_processors)):
        layer = SD3IPAdapterJointAttnProcessor2_0(hidden_size=inner, ip_hidden_states_dim=inner, head_dim=head_dim,
                                                  timesteps_emb_dim=hidden_dim)
        with torch.no_grad():  # visible effects: the adapter's keys/values and its RMS norms away from 1
            for name, param in layer.named_parameters():
                if name.startswith(("to_k_ip", "to_v_ip")):
                    param.mul_(3.0)
                elif name.endswith("norm_q.weight") or name.endswith("norm_ip_k.weight"):
                    param.copy_(1.0 + 0.5 * torch.randn(param.shape))
        for key, value in layer.state_dict().items():
            state[f"ip_adapter.{index}.{key}"] = value
    return state


def save_adapter_bin(state: dict, path: Path) -> Path:
    """The nested {"image_proj": ..., "ip_adapter": ...} torch file InstantX publishes (ip-adapter.bin)."""
    nested: dict = {"image_proj": {}, "ip_adapter": {}}
    for key, value in state.items():
        group, rest = key.split(".", 1)
        nested[group][rest] = value.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(nested, str(path))
    return path


def save_adapter(state: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    """models/ipadapter/* and models/clip_vision/* for the shipped IP-Adapter workflows."""
    tiny = tests_module("tiny_models")
    models_dir = Path(models_dir)
    ipadapter, clip_vision = models_dir / "ipadapter", models_dir / "clip_vision"
    written = []
    vit_h = tiny_image_encoder(VIT_H, seed)
    vit_g = tiny_image_encoder(VIT_BIGG, seed + 1)
    written.append(save_encoder_single_file(vit_h, clip_vision / VIT_H))
    written.append(save_encoder_single_file(vit_g, clip_vision / VIT_BIGG))
    sd1_unet = tiny.tiny_sd1_components(seed)["unet"]
    sdxl_unet = tiny.tiny_sdxl_components(seed)["unet"]
    h_proj, h_hidden = ENCODER_SHAPES[VIT_H]["projection_dim"], ENCODER_SHAPES[VIT_H]["hidden_size"]
    g_proj = ENCODER_SHAPES[VIT_BIGG]["projection_dim"]
    written.append(save_adapter(adapter_state_dict(sd1_unet, "base", h_proj, seed + 10), ipadapter / SD15_BASE))
    written.append(save_adapter(adapter_state_dict(sd1_unet, "plus", h_hidden, seed + 11), ipadapter / SD15_PLUS))
    written.append(save_adapter(adapter_state_dict(sd1_unet, "plus", h_hidden, seed + 12), ipadapter / SD15_PLUS_FACE))
    written.append(save_adapter(adapter_state_dict(sdxl_unet, "base", g_proj, seed + 13), ipadapter / SDXL_BASE))
    return written
