"""CLIP / SigLIP vision encoders for IP-Adapter: loading offline, encoding with a cache.

IP-Adapter turns a reference picture into "image tokens" in two stages: a
vision encoder (CLIP ViT-H for the SD1.5 and *_vit-h SDXL adapters, ViT-bigG
for ip-adapter_sdxl, ViT-L/14 for Flux.1's; SigLIP so400m for SD3.5's,
image_encoder_siglip.py) and the adapter's own projection. This module is the
first stage. Encoders come from ComfyUI's `models/clip_vision/` either as a
transformers folder (config.json + weights) or as the usual single
`.safetensors` in transformers' key layout, whose configuration is read from
the tensor shapes (no config files are downloaded).

Encoding the same picture again is a cache hit, keyed by a hash of the pixel
values and the encoder, because a workflow re-queued with another seed or
prompt would otherwise re-run the encoder for nothing.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import image_encoder_siglip as siglip
from .image_encoder_siglip import CLIP, SIGLIP

logger = logging.getLogger(__name__)

# What the adapter's projection reads from the encoder.
IMAGE_EMBEDS = "image_embeds"  # the projected CLS embedding (base adapters)
HIDDEN_STATES = "hidden_states"  # the penultimate layer's tokens (plus, face)

# Heads of the published CLIP vision towers by width (ViT-B, L, H, bigG);
# other widths (tiny test models) use 64-wide heads, as CLIP does.
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1664: 16}


class ImageEncoderError(ValueError):
    """A predictable problem with an image encoder file (a user mistake)."""


@dataclass(frozen=True)
class ImageEncoder:
    """A loaded vision encoder and where it came from (for messages and caching)."""

    name: str
    model: torch.nn.Module  # transformers CLIPVisionModelWithProjection, or SiglipVisionModel (arch SIGLIP)
    key: str  # identity for the embeds cache: real path, size and mtime
    arch: str = CLIP  # CLIP or SIGLIP: which adapters can read it, which image processor it takes

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def projection_dim(self) -> int:
        """The projected embedding's width (0 for SigLIP, which has no projection)."""
        return int(getattr(self.model.config, "projection_dim", 0) or 0) if self.arch == CLIP else 0

    @property
    def num_positions(self) -> int:
        grid = (self.image_size // int(self.model.config.patch_size)) ** 2
        return grid + 1 if self.arch == CLIP else grid  # SigLIP has no class token

    @property
    def label(self) -> str:
        return "a SigLIP vision model" if self.arch == SIGLIP else "a CLIP vision model"

    def width(self, kind: str) -> int:
        """The width of what this encoder gives for `kind`."""
        return self.projection_dim if kind == IMAGE_EMBEDS else self.hidden_size


@dataclass(frozen=True)
class ImageEmbeds:
    """DS_IMAGE_EMBEDS: encoded reference images, reusable across workflows.

    `positive` is [N, D] (IMAGE_EMBEDS) or [N, tokens, D] (HIDDEN_STATES) for
    N reference images; `negative` is what classifier-free guidance's
    unconditional half sees, computed as diffusers' `encode_image` does:
    zeros for IMAGE_EMBEDS, the encoding of an all-zero (normalised) picture
    for HIDDEN_STATES; with `negative_picture` (FluxPipeline's default
    negative_ip_adapter_image) the encoding of a black picture for both.
    With `zero_negative` (StableDiffusion3Pipeline) zeros of the hidden states. Both float32 on the CPU.
    """

    kind: str
    positive: torch.Tensor
    negative: torch.Tensor
    encoder_name: str
    negative_picture: bool = False
    # zeros of the hidden states' shape (StableDiffusion3Pipeline's negative ip_adapter_image_embeds)
    zero_negative: bool = False

    @property
    def count(self) -> int:
        return int(self.positive.shape[0])

    @property
    def width(self) -> int:
        return int(self.positive.shape[-1])


def _file_key(path: str) -> str:
    real = os.path.realpath(path)
    target = os.path.join(real, "config.json") if os.path.isdir(real) else real
    st = os.stat(target)
    return f"{real}|{st.st_size}|{st.st_mtime_ns}"


# ---------------------------------------------------------------- loading
_loaded: "dict[str, ImageEncoder]" = {}
_loaded_lock = threading.Lock()


def load_image_encoder(path: str, name: Optional[str] = None, dtype: torch.dtype = torch.float32) -> ImageEncoder:
    """A CLIP vision encoder from a transformers folder or a single .safetensors file.

    The same file (same size and mtime) with the same dtype gives back the
    same object, so two loader nodes naming it share one copy.
    """
    name = name or os.path.basename(path)
    if not os.path.exists(path):
        raise ImageEncoderError(f"clip_vision: '{name}' does not exist ({path})")
    key = _file_key(path) + f"|{dtype}"
    with _loaded_lock:
        cached = _loaded.get(key)
    if cached is not None:
        return cached
    if os.path.isdir(path):
        model, arch = _load_folder(path, name, dtype)
    elif path.lower().endswith((".safetensors", ".sft")):
        model, arch = _load_single_file(path, name, dtype)
    else:
        raise ImageEncoderError(
            f"clip_vision: '{name}' is neither a transformers folder nor a .safetensors file: "
            "use the .safetensors release of the encoder (e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors)"
        )
    model.eval().requires_grad_(False)
    encoder = ImageEncoder(name=name, model=model, key=key, arch=arch)
    with _loaded_lock:
        for stale in [k for k in _loaded if k.split("|")[0] == key.split("|")[0] and k != key]:
            del _loaded[stale]
        _loaded[key] = encoder
    return encoder


def _load_folder(path: str, name: str, dtype: torch.dtype):
    """(model, arch) of a transformers folder: CLIPVisionModelWithProjection, or SigLIP by its model_type."""
    import json

    from transformers import CLIPVisionModelWithProjection

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ImageEncoderError(
            f"clip_vision: the folder '{name}' has no config.json: it must be a transformers "
            "CLIPVisionModelWithProjection folder (as the image_encoder folder of the h94/IP-Adapter release) "
            "or a SigLIP folder (google/siglip-so400m-patch14-384)"
        )
    try:
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ImageEncoderError(f"clip_vision: the folder '{name}' has an unreadable config.json ({exc})") from exc
    if isinstance(config, dict) and siglip.is_siglip_folder_config(config):
        return siglip.load_folder(path, name, dtype), SIGLIP
    try:
        return CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True, dtype=dtype), CLIP
    except (OSError, ValueError) as exc:
        raise ImageEncoderError(f"clip_vision: could not load the folder '{name}': {exc}") from exc


def _count_layers(keys) -> int:
    pattern = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def config_from_state_dict(state: dict, name: str):
    """A CLIPVisionConfig read from a transformers-layout state dict's shapes."""
    from transformers import CLIPVisionConfig

    required = (
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.position_embedding.weight",
        "visual_projection.weight",
    )
    missing = [k for k in required if k not in state]
    if missing:
        hint = ""
        if any(k.startswith("visual.") for k in state):
            hint = " (OpenCLIP-layout files are not supported: use the transformers-layout release)"
        raise ImageEncoderError(
            f"clip_vision: '{name}' is not a CLIP vision model with a projection: missing {missing[:2]}{hint}. "
            "Use CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors or CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"
        )
    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, _, patch_size, _ = patch.shape
    positions = int(state["vision_model.embeddings.position_embedding.weight"].shape[0])
    grid = int(round((positions - 1) ** 0.5))
    layers = _count_layers(state.keys())
    intermediate = int(state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0])
    projection = int(state["visual_projection.weight"].shape[0])
    heads = _HEADS_BY_WIDTH.get(int(hidden)) or max(int(hidden) // 64, 1)
    if hidden % heads:
        raise ImageEncoderError(f"clip_vision: '{name}' has an unusual width {hidden}; use a transformers folder with its config.json")
    return CLIPVisionConfig(
        hidden_size=int(hidden),
        intermediate_size=intermediate,
        projection_dim=projection,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=grid * int(patch_size),
        patch_size=int(patch_size),
        # OpenAI's ViT-L uses quick_gelu; the LAION ViT-H / bigG towers use gelu.
        hidden_act="quick_gelu" if int(hidden) == 1024 else "gelu",
        layer_norm_eps=1e-5,
    )


def _load_single_file(path: str, name: str, dtype: torch.dtype):
    """(model, arch) of a transformers-layout .safetensors: CLIP with a projection, or SigLIP."""
    from safetensors.torch import load_file
    from transformers import CLIPVisionModelWithProjection

    try:
        state = load_file(path)
    except Exception as exc:  # safetensors raises its own error types
        raise ImageEncoderError(f"clip_vision: '{name}' is not a readable .safetensors file ({exc})") from exc
    if siglip.is_siglip_state(siglip.published_layout(state)):
        return siglip.load_single_file(state, name, dtype), SIGLIP
    config = config_from_state_dict(state, name)
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    state.pop("vision_model.embeddings.position_ids", None)
    return assign_state(model, state, name, "a CLIP vision model").to(dtype), CLIP


def assign_state(model, state: dict, name: str, what: str):
    """Load a single file's tensors into a model built on the meta device; refuse any mismatch."""
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ImageEncoderError(
            f"clip_vision: '{name}' does not match {what} read from its shapes "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    # Buffers not in the file (position_ids) are still on the meta device.
    for module in model.modules():
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                module.register_buffer(bname, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    return model


# ---------------------------------------------------------------- encoding
def pixel_values(encoder: ImageEncoder, images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [N,H,W,C] 0..1 -> CLIP pixel values, as diffusers' feature extractor.

    diffusers builds `CLIPImageProcessor(size=image_size, crop_size=image_size)`
    and feeds it PIL pictures; the same processor on the same 8-bit pixels
    gives the same tensor (shortest side resized bicubically, centre crop,
    CLIP mean/std).
    """
    from transformers import CLIPImageProcessor

    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4) or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"image must be a ComfyUI IMAGE [batch, height, width, channels], got {shape}")
    if images.ndim == 3:
        images = images[None]
    if images.shape[-1] == 1:
        images = images.repeat(1, 1, 1, 3)
    images = images[..., :3]
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    if encoder.arch == SIGLIP:  # a square bicubic resize, no crop (the SD3 pipeline's SiglipImageProcessor)
        return siglip.processor(encoder.image_size)(list(pixels), return_tensors="pt").pixel_values
    processor = CLIPImageProcessor(size=encoder.image_size, crop_size=encoder.image_size)
    return processor(list(pixels), return_tensors="pt").pixel_values


def _hash_images(images: torch.Tensor) -> str:
    data = images.detach().float().cpu().contiguous()
    h = hashlib.sha256()
    h.update(str(tuple(data.shape)).encode())
    h.update(data.numpy().tobytes())
    return h.hexdigest()


class EmbedsCache:
    """The last few encodings, by picture content and encoder (an LRU)."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: "OrderedDict[tuple, ImageEmbeds]" = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Optional[ImageEmbeds]:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return value

    def put(self, key: tuple, value: ImageEmbeds) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


embeds_cache = EmbedsCache()


def _encode(model, pixels: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == IMAGE_EMBEDS:
        return model(pixels).image_embeds
    return model(pixels, output_hidden_states=True).hidden_states[-2]


@torch.no_grad()
def encode_images(
    encoder: ImageEncoder,
    images: torch.Tensor,
    kind: str,
    *,
    device: Optional[torch.device] = None,
    prepare: Optional[Callable[[list], None]] = None,
    negative_picture: bool = False,
    negative_images: Optional[torch.Tensor] = None,
    zero_negative: bool = False,
) -> ImageEmbeds:
    """Encode reference pictures for an adapter that reads `kind`; cached.

    `prepare(modules)` is called before the encoder runs (the node layer
    passes ComfyUI's loader there, so the encoder is placed and accounted
    for by ComfyUI's model management). `negative_picture`: made for a
    Flux.1 adapter, whose negative is the encoding of a black picture
    (FluxPipeline's default negative image: black after any resize, so its
    size does not matter). `negative_images` (one, or one per reference
    image): what the negative rows see instead (FluxPipeline's
    negative_ip_adapter_image, IPAdapter_plus's negative image).
    """
    if kind not in (IMAGE_EMBEDS, HIDDEN_STATES):
        raise ValueError(f"kind must be {IMAGE_EMBEDS!r} or {HIDDEN_STATES!r}, got {kind!r}")
    key = (_hash_images(images), encoder.key, kind) + (("black negative",) if negative_picture else ())
    key += ("zero negative",) if zero_negative else ()
    if negative_images is not None:
        key += ("negative", _hash_images(negative_images))
    cached = embeds_cache.get(key)
    if cached is not None:
        logger.debug("IP-Adapter image embeds cache hit (%s)", encoder.name)
        return cached
    if prepare is not None:
        prepare([encoder.model])
    model = encoder.model
    param = next(model.parameters())
    device = torch.device(device) if device is not None else param.device
    pixels = pixel_values(encoder, images).to(device=device, dtype=param.dtype)
    if negative_images is not None or negative_picture:
        if negative_images is None:
            negative_images = torch.zeros(1, encoder.image_size, encoder.image_size, 3)
        negative_pixels = pixel_values(encoder, negative_images).to(device=device, dtype=param.dtype)
        if negative_pixels.shape[0] not in (1, pixels.shape[0]):
            raise ValueError(
                f"negative_image has {negative_pixels.shape[0]} pictures for {pixels.shape[0]} reference pictures: "
                "give one negative picture, or one per reference picture"
            )
        positive, negative = _encode(model, pixels, kind), _encode(model, negative_pixels, kind)
        negative = negative.expand(positive.shape[0], *negative.shape[1:])
    elif kind == IMAGE_EMBEDS or zero_negative:
        positive = _encode(model, pixels, kind)
        negative = torch.zeros_like(positive)
    else:
        positive = model(pixels, output_hidden_states=True).hidden_states[-2]
        negative = model(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
    embeds = ImageEmbeds(
        kind=kind,
        positive=positive.float().cpu(),
        negative=negative.float().cpu().contiguous(),
        encoder_name=encoder.name,
        negative_picture=negative_picture,
        zero_negative=zero_negative,
    )
    embeds_cache.put(key, embeds)
    return embeds
