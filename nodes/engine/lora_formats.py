"""LoRA files as they are found in the wild, read into one canonical form.

A LoRA for SD1.x/SDXL reaches users in several spellings of the same thing:

- kohya-ss / A1111 (`lora_unet_down_blocks_0_..._to_q.lora_down.weight`,
  `lora_te_...`, `lora_te1_`/`lora_te2_` for SDXL, one `.alpha` per layer);
  SDXL files name the UNet layers after the original (sgm/LDM) UNet
  (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`); LyCORIS
  LoCon uses the same keys for convolutions (and an optional `lora_mid`);
- diffusers / peft (`unet.<module>.lora_A.weight`, `lora_B.weight`,
  `text_encoder.<module>...`), the older diffusers spellings
  (`.lora.down.weight`, `.lora_linear_layer.up.weight`) and the attention
  processor format (`<attn>.processor.to_q_lora.down.weight`).

All of them say, per layer: a down matrix, an up matrix, optionally an alpha
(scale = alpha / rank) and a Tucker middle. `parse_state_dict` reads any of
them into `{component: {layer key: LoraLayer}}`, where the layer key is the
module path with "." replaced by "_" (kohya's own spelling, which is what
every format can be reduced to). Matching those keys to a model's real modules
happens in `lora.py`; the sgm → diffusers block renaming, which needs the
UNet's configuration, is `sgm_to_diffusers` here.

SD3 / Flux files use the same canonical form with the `transformer` (and
`text_encoder_3`, SD3's T5) components; their non-diffusers spellings are
first converted by diffusers itself (lora_dit.py), whose output this reader
then takes (including the old-style CLIP keys diffusers' Flux converter writes).

Why our own reader rather than diffusers' converters for SD1.x / SDXL: diffusers converts
kohya files into a mixture of old and new key styles that it then fails to
load in part (text-encoder attention and MLP layers together lose the
attention layers, see tests/unit/test_lora.py), and its converters are
private functions that change between releases.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional

import torch

UNET = "unet"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
TEXT_ENCODER_3 = "text_encoder_3"  # SD3's T5
TRANSFORMER = "transformer"  # SD3 / Flux denoiser (diffusers' folder name)
COMPONENTS = (UNET, TEXT_ENCODER, TEXT_ENCODER_2, TEXT_ENCODER_3, TRANSFORMER)

KOHYA = "kohya"
DIFFUSERS = "diffusers"


@dataclass(frozen=True)
class LoraLayer:
    """One layer's low-rank update: delta W = scale * up @ (mid) @ down."""

    down: torch.Tensor  # [rank, in] or [rank, in, kh, kw]
    up: torch.Tensor  # [out, rank] or [out, rank, 1, 1]
    alpha: Optional[float] = None  # None: scale 1 (diffusers/peft's convention)
    mid: Optional[torch.Tensor] = None  # LoCon Tucker core [rank, rank, kh, kw]
    up_bias: Optional[torch.Tensor] = None  # peft's lora_bias

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else float(self.alpha) / self.rank

    def delta(self, shape: torch.Size, device, strength: float = 1.0) -> torch.Tensor:
        """The float32 weight update for a weight of `shape`, times strength * alpha/rank."""
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32)
        if self.mid is not None:
            mid = self.mid.to(device=device, dtype=torch.float32)
            out = torch.einsum("oa,abhw,bi->oihw", up, mid, down.flatten(1))
        else:
            out = up @ down.flatten(1)
        return (out * (strength * self.scale)).reshape(shape)

    def in_out(self) -> tuple[int, int]:
        return int(self.down.shape[1]), int(self.up.shape[0])

    def kernel(self) -> tuple:
        source = self.mid if self.mid is not None else self.down
        return tuple(int(v) for v in source.shape[2:])


@dataclass(frozen=True)
class ParsedLora:
    """A LoRA file's layers by component, plus what could not be read."""

    format: str
    layers: dict  # component -> {layer key: LoraLayer}
    ignored: tuple  # keys that are no part of any layer we understand

    def count(self) -> int:
        return sum(len(v) for v in self.layers.values())


# Suffix -> part; the longest matching suffix wins (checked in this order).
_SUFFIXES = (
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_B.bias", "up_bias"),
    (".alpha", "alpha"),
)
# peft with an adapter name left in the key: `.lora_A.<adapter>.weight`.
_PEFT_NAMED = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.[^.]+\.weight$")
# diffusers' attention-processor format: `<attn>.processor.to_q_lora.down.weight`.
_ATTN_PROC = re.compile(r"^(?P<attn>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight$")
_ATTN_PROC_MODULE = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}

_KOHYA_PREFIXES = (
    ("lora_unet_", UNET),
    ("lora_te1_", TEXT_ENCODER),
    ("lora_te2_", TEXT_ENCODER_2),
    ("lora_te_", TEXT_ENCODER),
)
_DOTTED_PREFIXES = (
    (TEXT_ENCODER_3 + ".", TEXT_ENCODER_3),
    (TEXT_ENCODER_2 + ".", TEXT_ENCODER_2),
    (TEXT_ENCODER + ".", TEXT_ENCODER),
    (UNET + ".", UNET),
    (TRANSFORMER + ".", TRANSFORMER),
)


def split_key(key: str) -> Optional[tuple[str, str]]:
    """(module path, part) of one state-dict key, or None when it is no LoRA key."""
    match = _ATTN_PROC.match(key)
    if match:
        return f"{match['attn']}.{_ATTN_PROC_MODULE[match['proj']]}", match["part"]
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    match = _PEFT_NAMED.match(key)
    if match:
        return match["module"], "down" if match["ab"] == "A" else "up"
    return None


def component_of(module_path: str) -> tuple[Optional[str], str, str]:
    """(component, path inside it, format) for a module path from a LoRA key."""
    for prefix, component in _KOHYA_PREFIXES:
        if module_path.startswith(prefix):
            return component, module_path[len(prefix):], KOHYA
    for prefix, component in _DOTTED_PREFIXES:
        if module_path.startswith(prefix):
            return component, module_path[len(prefix):], DIFFUSERS
    if module_path.startswith("lora_"):
        return None, module_path, KOHYA  # another model's kohya prefix
    # The oldest diffusers files keep the UNet's module paths without a prefix.
    return UNET, module_path, DIFFUSERS


def layer_key(path: str) -> str:
    """kohya's spelling of a module path: dots become underscores."""
    return path.replace(".", "_")


def _alpha_value(tensor_or_number) -> float:
    if isinstance(tensor_or_number, torch.Tensor):
        return float(tensor_or_number.float().reshape(-1)[0].item())
    return float(tensor_or_number)


def metadata_alphas(metadata: Optional[dict]) -> dict:
    """Per component (lora_alpha, {module pattern: alpha}) from diffusers' saved metadata.

    diffusers' `save_lora_weights` stores each component's peft LoraConfig as
    JSON under `lora_adapter_metadata` with keys like `unet.lora_alpha`; a
    file written that way has no `.alpha` tensors.
    """
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    out = {}
    for component in COMPONENTS:
        alpha = config.get(f"{component}.lora_alpha")
        if alpha is None:
            continue
        patterns = config.get(f"{component}.alpha_pattern") or {}
        out[component] = (float(alpha), {str(k): float(v) for k, v in patterns.items()})
    return out


def _alpha_from_metadata(alphas: dict, component: str, path: str) -> Optional[float]:
    if component not in alphas:
        return None
    default, patterns = alphas[component]
    for pattern, value in patterns.items():
        # peft matches a pattern against the module name's tail.
        if path == pattern or path.endswith("." + pattern):
            return value
    return default


def parse_state_dict(state_dict: dict, metadata: Optional[dict] = None) -> ParsedLora:
    """Read any supported LoRA spelling into layers keyed by component and layer key."""
    parts: dict = {}
    ignored = []
    formats = set()
    for key, value in state_dict.items():
        split = split_key(key)
        if split is None:
            ignored.append(key)
            continue
        module_path, part = split
        component, path, fmt = component_of(module_path)
        if component is None:
            ignored.append(key)
            continue
        formats.add(fmt)
        entry = parts.setdefault((component, layer_key(path)), {"path": path})
        entry[part] = value

    alphas = metadata_alphas(metadata)
    layers: dict = {}
    for (component, key), entry in parts.items():
        down, up = entry.get("down"), entry.get("up")
        if down is None or up is None or down.ndim not in (2, 4) or up.ndim != down.ndim:
            ignored += [f"{component}:{key}.{p}" for p in entry if p != "path"]
            continue
        alpha = entry.get("alpha")
        alpha = _alpha_value(alpha) if alpha is not None else _alpha_from_metadata(alphas, component, entry["path"])
        layers.setdefault(component, {})[key] = LoraLayer(
            down=down, up=up, alpha=alpha, mid=entry.get("mid"), up_bias=entry.get("up_bias")
        )
    fmt = KOHYA if formats == {KOHYA} else DIFFUSERS if formats == {DIFFUSERS} else "mixed" if formats else "unknown"
    return ParsedLora(format=fmt, layers=layers, ignored=tuple(ignored))


# --------------------------------------------------------------- sgm (LDM) UNet names

_SGM_BLOCK = re.compile(r"^(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)$")
_SGM_MIDDLE = re.compile(r"^middle_block_(\d+)_(.+)$")
_SGM_RESNET = (
    ("in_layers_2", "conv1"),
    ("out_layers_3", "conv2"),
    ("emb_layers_1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
)
_SGM_TOP = {
    "input_blocks_0_0": "conv_in",
    "out_2": "conv_out",
    "time_embed_0": "time_embedding_linear_1",
    "time_embed_2": "time_embedding_linear_2",
    "label_emb_0_0": "add_embedding_linear_1",
    "label_emb_0_2": "add_embedding_linear_2",
}


def _resnet_inner(rest: str) -> str:
    for old, new in _SGM_RESNET:
        if rest == old:
            return new
    return rest


def sgm_to_diffusers(key: str, layers_per_block: int, up_block_has_attention: list[bool]) -> Optional[str]:
    """A kohya UNet layer key in the original UNet's naming → the diffusers key.

    kohya trains SDXL on the original (sgm) UNet, so SDXL LoRAs name blocks as
    `input_blocks_<i>_<j>_...`. With L layers per block, input block i > 0 is
    level (i-1)//(L+1), slot (i-1)%(L+1): a resnet (j=0) and attention (j=1)
    for slots < L, the downsampler for slot L. Output block i is level
    i//(L+1), slot i%(L+1): resnet (j=0), then attention or, in a level
    without attention, the upsampler (j=1), then the upsampler (j=2).
    None when the key is not in sgm naming.
    """
    for prefix, name in _SGM_TOP.items():
        if key == prefix or key.startswith(prefix + "_"):
            return name + key[len(prefix):]
    middle = _SGM_MIDDLE.match(key)
    if middle:  # resnet, attention, resnet
        index, rest = int(middle[1]), middle[2]
        if index == 1:
            return f"mid_block_attentions_0_{rest}"
        return f"mid_block_resnets_{index // 2}_{_resnet_inner(rest)}"
    match = _SGM_BLOCK.match(key)
    if not match:
        return None
    kind, index, inner, rest = match[1], int(match[2]), int(match[3]), match[4]
    per = layers_per_block + 1
    if kind == "input_blocks":
        level, slot = (index - 1) // per, (index - 1) % per
        if slot == layers_per_block:
            return f"down_blocks_{level}_downsamplers_0_" + ("conv" if rest == "op" else rest)
        if inner == 0:
            return f"down_blocks_{level}_resnets_{slot}_{_resnet_inner(rest)}"
        return f"down_blocks_{level}_attentions_{slot}_{rest}"
    level, slot = index // per, index % per
    if inner == 0:
        return f"up_blocks_{level}_resnets_{slot}_{_resnet_inner(rest)}"
    has_attention = level < len(up_block_has_attention) and up_block_has_attention[level]
    if inner == 1 and has_attention:
        return f"up_blocks_{level}_attentions_{slot}_{rest}"
    return f"up_blocks_{level}_upsamplers_0_{rest}"


__all__ = [
    "COMPONENTS",
    "DIFFUSERS",
    "KOHYA",
    "TEXT_ENCODER",
    "TEXT_ENCODER_2",
    "TEXT_ENCODER_3",
    "TRANSFORMER",
    "UNET",
    "LoraLayer",
    "ParsedLora",
    "component_of",
    "layer_key",
    "metadata_alphas",
    "parse_state_dict",
    "sgm_to_diffusers",
    "split_key",
]
