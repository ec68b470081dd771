"""IP-Adapter weight files in the published h94 layout, read into modules.

The h94/IP-Adapter releases store two groups of tensors: `image_proj.*` (the
projection from CLIP features to image tokens) and `ip_adapter.N.to_k_ip` /
`to_v_ip` (one key/value pair per cross-attention layer of the UNet, N = 1,
3, 5, ... in the UNet's attention-processor order). The projection's keys say
which variant a file is, so the user never picks it:

- base (`image_proj.proj`, `image_proj.norm`): 4 tokens from the projected CLS
  embedding (ip-adapter_sd15, ip-adapter_sdxl, *_vit-h, light);
- plus / plus-face (`image_proj.latents`, a Perceiver "Resampler"): 16 tokens
  from the penultimate hidden states (the file name tells plus from face);
- full-face (`image_proj.proj.0/2/3`): an MLP over all 257 hidden states.

FaceID files need InsightFace embeddings rather than CLIP and are refused
with a message.

Flux.1 adapters come in XLabs' layout (the `ip_adapter.safetensors` that
diffusers' `FluxPipeline.load_ip_adapter` reads): `ip_adapter_proj_model.*`
(a base projection: CLIP ViT-L/14's image embedding to 4 tokens of T5 width)
and `double_blocks.N.processor.ip_adapter_double_stream_k_proj` / `_v_proj`
(a key/value pair with biases per double-stream block). The keys are renamed
to the h94 ones on reading, so one projection builder serves both; the
adapter remembers its `target` (UNET, FLUX or SD3) and the hooks refuse a
model of another kind.

SD3 / SD3.5 adapters come in InstantX's layout (a timestep-conditioned
resampler read from a SigLIP encoder, norm_ip layers): ip_adapter_sd3_loading.py
reads them into diffusers' modules; their encoder must be SigLIP, the
others' CLIP. The projection modules are diffusers' own classes, so the
image tokens are exactly those of `pipeline.load_ip_adapter`.

`.safetensors` is read directly; a `.bin` only through
`torch.load(weights_only=True)`, which refuses pickles that carry code
without running them.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from . import ip_adapter_sd3_loading as sd3_loading
from .image_encoder import HIDDEN_STATES, IMAGE_EMBEDS, ImageEncoder
from .image_encoder_siglip import CLIP, SIGLIP
from .ip_adapter_sd3_loading import SD3, TIME_RESAMPLER
from .weight_files import load_plain_tensors

logger = logging.getLogger(__name__)

BASE = "base"
PLUS = "plus"
PLUS_FACE = "plus-face"
FULL_FACE = "full-face"
VARIANTS = (BASE, PLUS, PLUS_FACE, FULL_FACE)

# What an adapter file was made for: a UNet's cross-attention layers (h94:
# SD1.x, SDXL), the double-stream blocks of a Flux.1 transformer (XLabs) or
# every attention of an SD3 / SD3.5 transformer (InstantX; SD3).
UNET = "unet"
FLUX = "flux"

# diffusers' FluxIPAdapterMixin: how XLabs' keys map onto the h94 ones.
_XLABS_PROJ = "ip_adapter_proj_model."
_XLABS_LAYER = re.compile(r"^double_blocks\.(\d+)\.processor\.ip_adapter_double_stream_([kv])_proj\.(weight|bias)$")


class IPAdapterLoadError(ValueError):
    """A predictable problem with an IP-Adapter file (a user mistake)."""


class IPAdapterWeights(nn.Module):
    """The projection and the per-layer key/value weights of one adapter file.

    A module so that ComfyUI's model management can place and free it like
    any model; it is never attached to a UNet.
    """

    def __init__(self, projection: nn.Module, to_k: list[torch.Tensor], to_v: list[torch.Tensor],
                 k_bias: Optional[list] = None, v_bias: Optional[list] = None):
        super().__init__()
        self.projection = projection
        self.to_k_ip = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in to_k])
        self.to_v_ip = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in to_v])
        # XLabs' Flux layers have biases; the h94 UNet layers have none (empty lists).
        self.to_k_ip_bias = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in k_bias or ()])
        self.to_v_ip_bias = nn.ParameterList([nn.Parameter(t, requires_grad=False) for t in v_bias or ()])

    @property
    def num_layers(self) -> int:
        return len(self.to_k_ip)


@dataclass(frozen=True)
class IPAdapter:
    """DS_IP_ADAPTER: adapter weights plus the image encoder they were trained with."""

    name: str
    variant: str
    kind: str  # what the projection reads: IMAGE_EMBEDS or HIDDEN_STATES
    weights: IPAdapterWeights
    encoder: ImageEncoder
    image_embed_dim: int  # the width the projection expects
    cross_attention_dim: int  # the UNet text width this adapter was made for (Flux: T5's width)
    target: str = UNET  # UNET (h94 files), FLUX (XLabs files) or SD3 (InstantX files)

    @property
    def negative_picture(self) -> bool:
        """Whether CFG's negative rows see an encoded black picture (FluxPipeline) rather than zeros."""
        return self.target == FLUX

    @property
    def zero_negative(self) -> bool:
        """Whether CFG's negative rows see zero hidden states (StableDiffusion3Pipeline)."""
        return self.target == SD3

    @property
    def encoder_name(self) -> str:
        return self.encoder.name


# ------------------------------------------------------------------ reading
def _flatten(obj, prefix: str = "") -> dict:
    out = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, torch.Tensor):
            out[name] = value
    return out


def read_state_dict(path: str, name: str) -> dict:
    """All tensors of an adapter file, keys flattened ("image_proj.proj.weight")."""
    lower = path.lower()
    if lower.endswith((".safetensors", ".sft")):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:  # safetensors has its own error types
            raise IPAdapterLoadError(f"ipadapter_file: '{name}' is not a readable .safetensors file ({exc})") from exc
    if lower.endswith((".bin", ".pt", ".pth", ".ckpt")):
        data = load_plain_tensors(path, f"ipadapter_file: '{name}'", IPAdapterLoadError)
        if not isinstance(data, dict):
            raise IPAdapterLoadError(f"ipadapter_file: '{name}' holds a {type(data).__name__}, not a dict of tensors")
        return _flatten(data)
    raise IPAdapterLoadError(f"ipadapter_file: '{name}' must be a .safetensors (or .bin) file")


# --------------------------------------------------------------- projection
_PLUS_RULES = [
    (re.compile(r"^layers\.(\d+)\.0\.norm1\."), r"layers.\1.ln0."),
    (re.compile(r"^layers\.(\d+)\.0\.norm2\."), r"layers.\1.ln1."),
    (re.compile(r"^layers\.(\d+)\.0\.to_q\."), r"layers.\1.attn.to_q."),
    (re.compile(r"^layers\.(\d+)\.0\.to_out\."), r"layers.\1.attn.to_out.0."),
    (re.compile(r"^layers\.(\d+)\.1\.0\."), r"layers.\1.ff.0."),
    (re.compile(r"^layers\.(\d+)\.1\.1\."), r"layers.\1.ff.1.net.0.proj."),
    (re.compile(r"^layers\.(\d+)\.1\.3\."), r"layers.\1.ff.1.net.2."),
]
_KV = re.compile(r"^layers\.(\d+)\.0\.to_kv\.(.*)$")


def _plus_state(proj: dict) -> dict:
    """h94 Resampler keys -> diffusers' IPAdapterPlusImageProjection keys."""
    out = {}
    for key, value in proj.items():
        m = _KV.match(key)
        if m:
            k, v = value.chunk(2, dim=0)
            out[f"layers.{m.group(1)}.attn.to_k.{m.group(2)}"] = k
            out[f"layers.{m.group(1)}.attn.to_v.{m.group(2)}"] = v
            continue
        for pattern, repl in _PLUS_RULES:
            if pattern.match(key):
                key = pattern.sub(repl, key)
                break
        out[key] = value
    return out


def _build_projection(proj: dict, name: str):
    """(module, variant, kind, image_embed_dim, cross_attention_dim) of a projection."""
    from diffusers.models.embeddings import (
        ImageProjection,
        IPAdapterFullImageProjection,
        IPAdapterPlusImageProjection,
    )

    if "perceiver_resampler.proj_in.weight" in proj or ("norm.weight" in proj and "proj.0.weight" in proj):
        raise IPAdapterLoadError(
            f"ipadapter_file: '{name}' is a FaceID adapter, which needs InsightFace face embeddings "
            "rather than a CLIP image encoder; it is not supported. Use ip-adapter-plus-face or "
            "ip-adapter-full-face for faces."
        )
    if "proj.weight" in proj and "norm.weight" in proj:
        cross = int(proj["norm.weight"].shape[0])
        embed = int(proj["proj.weight"].shape[1])
        tokens = int(proj["proj.weight"].shape[0]) // cross
        module = ImageProjection(image_embed_dim=embed, cross_attention_dim=cross, num_image_text_embeds=tokens)
        state = {k.replace("proj.", "image_embeds.", 1) if k.startswith("proj.") else k: v for k, v in proj.items()}
        variant, kind = BASE, IMAGE_EMBEDS
    elif "proj.3.weight" in proj:
        embed = int(proj["proj.0.weight"].shape[0])
        cross = int(proj["proj.3.weight"].shape[0])
        module = IPAdapterFullImageProjection(image_embed_dim=embed, cross_attention_dim=cross)
        renames = {"proj.0.": "ff.net.0.proj.", "proj.2.": "ff.net.2.", "proj.3.": "norm."}
        state = {}
        for k, v in proj.items():
            for old, new in renames.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            state[k] = v
        variant, kind = FULL_FACE, HIDDEN_STATES
    elif "latents" in proj and "proj_in.weight" in proj:
        state = _plus_state(proj)
        embed = int(proj["proj_in.weight"].shape[1])
        hidden = int(proj["latents"].shape[2])
        cross = int(proj["proj_out.weight"].shape[0])
        depth = len({k.split(".")[1] for k in proj if k.startswith("layers.")})
        heads = max(int(state["layers.0.attn.to_q.weight"].shape[0]) // 64, 1)
        module = IPAdapterPlusImageProjection(
            embed_dims=embed,
            output_dims=cross,
            hidden_dims=hidden,
            depth=depth,
            heads=heads,
            num_queries=int(proj["latents"].shape[1]),
        )
        variant = PLUS_FACE if "face" in os.path.basename(name).lower() else PLUS
        kind = HIDDEN_STATES
    else:
        raise IPAdapterLoadError(
            f"ipadapter_file: '{name}' has no IP-Adapter image projection this pack knows "
            "(image_proj.proj / image_proj.latents / image_proj.proj.3): use an h94/IP-Adapter release file"
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise IPAdapterLoadError(f"ipadapter_file: '{name}' has an image projection of an unexpected shape ({exc})") from exc
    return module, variant, kind, embed, cross


def _layer_weights(state: dict, name: str) -> tuple[list, list]:
    pattern = re.compile(r"^ip_adapter\.(\d+)\.to_k_ip\.weight$")
    ids = sorted(int(m.group(1)) for k in state if (m := pattern.match(k)))
    if not ids:
        raise IPAdapterLoadError(f"ipadapter_file: '{name}' has no ip_adapter.N.to_k_ip weights: it is not an IP-Adapter")
    to_k, to_v, k_bias, v_bias = [], [], [], []
    for i in ids:
        v_key = f"ip_adapter.{i}.to_v_ip.weight"
        if v_key not in state:
            raise IPAdapterLoadError(f"ipadapter_file: '{name}' lacks {v_key}: the file is incomplete")
        to_k.append(state[f"ip_adapter.{i}.to_k_ip.weight"])
        to_v.append(state[v_key])
        for which, out in (("k", k_bias), ("v", v_bias)):
            bias = state.get(f"ip_adapter.{i}.to_{which}_ip.bias")
            if bias is not None:
                out.append(bias)
    if k_bias and (len(k_bias) != len(ids) or len(v_bias) != len(ids)):
        raise IPAdapterLoadError(f"ipadapter_file: '{name}' has biases for some layers only: the file is incomplete")
    return to_k, to_v, k_bias, v_bias


def is_xlabs_flux(state: dict) -> bool:
    """A Flux.1 IP-Adapter in XLabs' layout (ip_adapter_proj_model.*, double_blocks.N.processor.*)."""
    return any(k.startswith(_XLABS_PROJ) for k in state) or any(_XLABS_LAYER.match(k) for k in state)


def xlabs_to_h94(state: dict, name: str) -> dict:
    """XLabs' Flux keys renamed to the h94 ones (image_proj.*, ip_adapter.N.to_k_ip/to_v_ip.*)."""
    out = {}
    for key, value in state.items():
        if key.startswith(_XLABS_PROJ):
            out["image_proj." + key[len(_XLABS_PROJ):]] = value
        elif (m := _XLABS_LAYER.match(key)):
            out[f"ip_adapter.{m.group(1)}.to_{m.group(2)}_ip.{m.group(3)}"] = value
    if not any(k.startswith("image_proj.") for k in out):
        raise IPAdapterLoadError(
            f"ipadapter_file: '{name}' has Flux double_blocks IP-Adapter layers but no ip_adapter_proj_model "
            "weights: the file is incomplete"
        )
    return out


# ------------------------------------------------------------------ loading
def check_encoder(adapter_name: str, kind: str, image_embed_dim: int, encoder: ImageEncoder,
                  target: str = UNET) -> None:
    """Refuse an encoder whose output the adapter's projection cannot read."""
    wanted = SIGLIP if target == SD3 else CLIP
    if encoder.arch != wanted:
        adapter = ("an SD3.5 IP-Adapter (InstantX), which reads SigLIP hidden states: use "
                   "google/siglip-so400m-patch14-384 (a transformers folder, or its model.safetensors / ComfyUI's "
                   "sigclip_vision_patch14_384.safetensors)") if target == SD3 else (
                   "an SD1.x/SDXL/Flux.1 IP-Adapter, which reads a CLIP vision model: use the CLIP encoder it was "
                   "trained with (CLIP-ViT-H-14, CLIP-ViT-bigG-14 or CLIP ViT-L/14)")
        raise IPAdapterLoadError(
            f"clip_vision: the image encoder '{encoder.name}' is {encoder.label}, but '{adapter_name}' is {adapter}"
        )
    got = encoder.width(kind)
    if got == image_embed_dim:
        return
    what = "projected image embedding" if kind == IMAGE_EMBEDS else "hidden states"
    raise IPAdapterLoadError(
        f"clip_vision: the image encoder '{encoder.name}' does not match the IP-Adapter '{adapter_name}': "
        f"the adapter reads a {image_embed_dim}-wide {what}, the encoder gives {got}. "
        "ip-adapter_sdxl.safetensors needs CLIP-ViT-bigG-14-laion2B-39B-b160k; the SD1.5 adapters and the "
        "SDXL *_vit-h adapters need CLIP-ViT-H-14-laion2B-s32B-b79K; the Flux.1 adapters (XLabs) need "
        "CLIP ViT-L/14 (openai/clip-vit-large-patch14); the SD3.5 adapter (InstantX) needs "
        "siglip-so400m-patch14-384. Pick the encoder the adapter was trained with."
    )


_cache: "dict[tuple, weakref.ref]" = {}
_cache_lock = threading.Lock()


def load_ip_adapter(
    path: str, encoder: ImageEncoder, *, name: Optional[str] = None, dtype: torch.dtype = torch.float32
) -> IPAdapter:
    """An adapter file plus its encoder as a DS_IP_ADAPTER value.

    The weights of one file (same size and mtime, same dtype) are shared
    between every loader naming it; only weak references are kept here.
    """
    name = name or os.path.basename(path)
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns, str(dtype))
    with _cache_lock:
        ref = _cache.get(key)
        cached = ref() if ref is not None else None
    if cached is not None:
        weights, variant, kind, embed, cross, target = cached.module, *cached.info
    else:
        state = read_state_dict(path, name)
        if sd3_loading.is_instantx_sd3(state):
            weights, embed, cross = sd3_loading.build(state, name, dtype)
            variant, kind, target = TIME_RESAMPLER, HIDDEN_STATES, SD3
        else:
            weights, variant, kind, embed, cross, target = _read_h94_or_xlabs(state, name, dtype)
        entry = _Entry(weights, (variant, kind, embed, cross, target))
        with _cache_lock:
            _cache[key] = weakref.ref(entry)
        weights.__dict__["_ds_cache_entry"] = entry  # the entry lives as long as the weights
    check_encoder(name, kind, embed, encoder, target)
    logger.info("IP-Adapter %s: %s %s, %d layers, %s-wide tokens, encoder %s", name, target, variant,
                weights.num_layers, cross, encoder.name)
    return IPAdapter(name, variant, kind, weights, encoder, embed, cross, target)


def _read_h94_or_xlabs(state: dict, name: str, dtype: torch.dtype) -> tuple:
    """(weights, variant, kind, embed, cross, target) of an h94 (UNET) or XLabs (FLUX) state dict."""
    target = UNET
    if is_xlabs_flux(state):
        state, target = xlabs_to_h94(state, name), FLUX
    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    if not proj:
        raise IPAdapterLoadError(
            f"ipadapter_file: '{name}' has no image_proj weights: it is not an IP-Adapter in the h94 layout"
        )
    projection, variant, kind, embed, cross = _build_projection(proj, name)
    to_k, to_v, k_bias, v_bias = _layer_weights(state, name)
    for k in to_k:
        if int(k.shape[1]) != cross:
            raise IPAdapterLoadError(
                f"ipadapter_file: '{name}' has to_k_ip weights {tuple(k.shape)} that do not match its "
                f"{cross}-wide image tokens: the file is damaged"
            )
    weights = IPAdapterWeights(projection, to_k, to_v, k_bias, v_bias).to(dtype).eval().requires_grad_(False)
    return weights, variant, kind, embed, cross, target


class _Entry:
    def __init__(self, module, info):
        self.module = module
        self.info = info
