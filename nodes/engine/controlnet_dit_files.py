"""Single-file transformer ControlNets (Flux.1, SD3 / SD3.5): the layout from the keys, the config from the shapes.

People put a ControlNet in models/controlnet as they download it: one
.safetensors, no config.json beside it. Three layouts are served, each into
the diffusers model the folder route builds (`controlnet_dit_loading`):

* Flux, diffusers names (`FluxControlNetModel`): InstantX's
  FLUX.1-dev-Controlnet-Canny, the Union models of InstantX / Shakker-Labs
  (`controlnet_mode_embedder`: one row per control mode), XLabs'
  "-diffusers" releases (`input_hint_block.conv_in/blocks/conv_out`: a pixel
  hint). Told by `controlnet_x_embedder.weight`.
* XLabs' original Flux files (flux-canny-controlnet-v3.safetensors and the
  depth / hed ones): BFL block names (`double_blocks.N.img_attn.qkv`, `img_in`,
  `time_in`, ...), a `pos_embed_input` linear and the pixel-hint embedder as
  one `input_hint_block.0..14` Sequential (eight 3x3 convs, SiLU between, the
  3rd, 5th and 7th with stride 2). The same network as the "-diffusers"
  release: the blocks go through `dit_convert.flux_to_diffusers` (the Flux
  transformer's own BFL mapping), `pos_embed_input` is
  `controlnet_x_embedder`, and the Sequential's convs are, in order,
  `conv_in`, `blocks.0..5`, `conv_out` of diffusers' conditioning embedding
  (the same strides). Told by `double_blocks.*` beside `controlnet_blocks.*`
  and `input_hint_block.0.weight`.
* SD3, diffusers names (`SD3ControlNetModel`): InstantX's SD3-Controlnet-*
  (joint blocks with a `context_embedder`, their own `pos_embed`), or a
  converted SD3.5 one (no context embedder). Told by
  `pos_embed_input.proj.weight`.
* Stability's SD3.5 ControlNets (sd3.5_large_controlnet_canny / depth /
  blur.safetensors): the same `pos_embed_input`, `controlnet_blocks`,
  `time_text_embed` names, but MMDiT block names inside
  `transformer_blocks.N` (`attn.qkv`, `attn.proj`, `mlp.fc1/fc2`,
  `adaLN_modulation.1`) and a `control_type` scalar. diffusers 0.42's
  single_file_utils knows no SD3 ControlNet file; its
  scripts/convert_sd3_controlnet_to_diffusers.py gives the facts used here:
  fused qkv split in three, no scale/shift swap, and an SD3ControlNetModel of
  single-stream blocks (`joint_attention_dim=None`), no position embedding of
  its own (`use_pos_embed=False`: the transformer's is lent at run time),
  pooled text not zeroed. Keys that script leaves unread are left unread
  (logged), as it and ComfyUI do.

What shapes cannot tell, and the rule taken:

* SD3 head width without a qk-norm weight: 64, as every MMDiT (the same rule
  as `dit_configs` for SD3 medium transformers).
* `force_zeros_for_pooled_projection`: True for joint-block files (InstantX
  SD3 ControlNets, the diffusers default), False for single-stream files
  (SD3.5, as Stability's config and diffusers' converter set it).
* Flux rotary axes: `dit_configs.flux_rope_axes`.
* XLabs-style patch size: the hint embedder's channels unfolded into a
  packed token, so patch = sqrt(in_channels / hint channels) (2 for XLabs).

Layouts diffusers has no model for are refused naming the file, what it is
and the fix: other BFL-named Flux ControlNets (no XLabs hint embedder),
TheMisto.ai's MistoLine, and inpainting
ControlNets whose hint embedder takes extra mask channels (the pack's hook
gives the hint latents only).
"""
from __future__ import annotations

import logging
import math
import re
from typing import Optional

from .components import FLUX, SD3
from .dit_configs import flux_rope_axes
from .dit_convert import flux_to_diffusers
from .families import ModelLoadError
from .single_file import _assign

logger = logging.getLogger(__name__)

FLUX_DIFFUSERS = "flux-diffusers"
FLUX_XLABS = "flux-xlabs"
SD3_DIFFUSERS = "sd3-diffusers"
SD35_STABILITY = "sd35-stability"

SD3_HEAD_DIM = 64  # every MMDiT; a qk-norm weight, where present, says it instead
XLABS_HINT_WIDTHS = (16, 16, 16, 16)  # FluxControlNetModel's fixed input_hint_block widths

_FIX = (
    "Use a diffusers-format ControlNet instead: a FluxControlNetModel / SD3ControlNetModel folder "
    "(config.json + weights) or its lone diffusion_pytorch_model.safetensors in models/controlnet"
)


def _count(keys, prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def kind_of(keys, name: str) -> Optional[str]:
    """Which transformer-ControlNet layout a file's keys are; None when it is no Flux/SD3 ControlNet.

    Raises ModelLoadError for Flux/SD3 ControlNet layouts that cannot be served.
    """
    keys = set(keys)
    if "controlnet_blocks.0.linear.weight" in keys or any(k.startswith("single_controlnet_blocks.") for k in keys):
        raise ModelLoadError(
            f"ControlNet {name!r} is a MistoLine Flux ControlNet (TheMisto.ai's own layout: "
            "controlnet_blocks.N.linear), for which diffusers has no model, so Diffusers Studio cannot run it. "
            f"{_FIX}, e.g. InstantX/FLUX.1-dev-Controlnet-Union or Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro."
        )
    if any(k.startswith("double_blocks.") for k in keys) and any(k.startswith("controlnet_blocks.") for k in keys):
        if "input_hint_block.0.weight" in keys and "pos_embed_input.weight" in keys:
            return FLUX_XLABS
        raise ModelLoadError(
            f"ControlNet {name!r} has Flux blocks in BFL's names (double_blocks.*) but no XLabs pixel-hint "
            "embedder (input_hint_block.0 and pos_embed_input), so it is no layout Diffusers Studio knows. "
            f"{_FIX}, or XLabs' own files (e.g. XLabs-AI/flux-controlnet-collections flux-canny-controlnet-v3)."
        )
    if "controlnet_x_embedder.weight" in keys:
        if any(".img_mlp." in k for k in keys):
            raise ModelLoadError(
                f"ControlNet {name!r} is a Qwen-Image ControlNet (InstantX), not a Flux.1 or SD3 one; Diffusers "
                "Studio has no Qwen-Image family. Select a ControlNet made for the loaded model's family."
            )
        return FLUX_DIFFUSERS
    if "pos_embed_input.proj.weight" in keys:
        if "transformer_blocks.0.adaLN_modulation.1.weight" in keys:
            return SD35_STABILITY
        return SD3_DIFFUSERS
    return None


# ------------------------------------------------------------------ Stability SD3.5 -> diffusers

_SD35_BLOCK = {
    "attn.proj": "attn.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "adaLN_modulation.1": "norm1.linear",
}
_SD35_KEEP = re.compile(r"(controlnet_blocks\.\d+|pos_embed_input\.proj|time_text_embed\.[a-z_]+\.linear_[12])\.")
_SD35_BLOCK_KEY = re.compile(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$")


def sd35_to_diffusers(state: dict, name: str) -> dict:
    """Stability's SD3.5 ControlNet names -> SD3ControlNetModel's (single-stream blocks)."""
    out, unread = {}, []
    for key, value in state.items():
        if _SD35_KEEP.match(key):
            out[key] = value
            continue
        match = _SD35_BLOCK_KEY.match(key)
        if match is None:
            if key != "control_type":
                unread.append(key)
            continue
        index, inner, end = match.groups()
        target = f"transformer_blocks.{index}."
        if inner == "attn.qkv":
            for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                out[f"{target}attn.{part}.{end}"] = chunk.clone()
        elif inner in _SD35_BLOCK:
            out[f"{target}{_SD35_BLOCK[inner]}.{end}"] = value
        else:
            unread.append(key)
    if unread:
        logger.warning("ControlNet %s: %d tensors not used by SD3ControlNetModel (as in diffusers' converter): %s",
                       name, len(unread), ", ".join(sorted(unread)[:8]))
    return out


# ------------------------------------------------------------------ XLabs original -> diffusers

_XLABS_HINT = re.compile(r"input_hint_block\.(\d+)\.(weight|bias)$")
_XLABS_OWN = re.compile(r"controlnet_blocks\.\d+\.(weight|bias)$")


def _xlabs_hint_names(state: dict, name: str) -> dict:
    """Sequential index -> diffusers name: the convs in order are conv_in, blocks.0.., conv_out."""
    convs = sorted({int(m.group(1)) for k in state if (m := _XLABS_HINT.match(k))})
    if len(convs) < 2:
        raise ModelLoadError(
            f"ControlNet {name!r} is an XLabs Flux ControlNet whose hint embedder (input_hint_block) has "
            f"{len(convs)} convolution(s), not XLabs' eight: the file is incomplete or damaged. Download it again."
        )
    names = {convs[0]: "conv_in", convs[-1]: "conv_out"}
    names.update({index: f"blocks.{i}" for i, index in enumerate(convs[1:-1])})
    return names


def xlabs_to_diffusers(state: dict, name: str) -> dict:
    """XLabs' original Flux ControlNet names -> FluxControlNetModel's (an XLabs "-diffusers" model)."""
    hint_names = _xlabs_hint_names(state, name)
    own, blocks = {}, {}
    for key, value in state.items():
        if (match := _XLABS_HINT.match(key)) is not None:
            own[f"input_hint_block.{hint_names[int(match.group(1))]}.{match.group(2)}"] = value
        elif key.startswith("pos_embed_input."):
            own["controlnet_x_embedder." + key.split(".", 1)[1]] = value
        elif _XLABS_OWN.match(key):
            own[key] = value
        else:
            blocks[key] = value
    if "img_in.weight" not in blocks:
        raise ModelLoadError(
            f"ControlNet {name!r} looks like an XLabs Flux ControlNet but has no 'img_in.weight': the file is "
            "incomplete or damaged. Download it again."
        )
    try:
        converted = flux_to_diffusers(blocks)
    except KeyError as exc:
        raise ModelLoadError(
            f"ControlNet {name!r} is an XLabs Flux ControlNet, but its tensor {exc.args[0]!r} has no place in "
            f"one: the file is damaged or a variant Diffusers Studio does not support. {_FIX}."
        ) from None
    return {**converted, **own}


# ------------------------------------------------------------------ configs from shapes


def _getter(state: dict, name: str, what: str):
    def get(key: str) -> tuple:
        if key not in state:
            raise ModelLoadError(
                f"ControlNet {name!r} looks like {what} but has no {key!r}: the file is incomplete or damaged. "
                "Download it again."
            )
        return tuple(state[key].shape)

    return get


def flux_config(state: dict, name: str) -> dict:
    """FluxControlNetModel config from diffusers-named weights."""
    get = _getter(state, name, "a Flux.1 ControlNet")
    inner, in_channels = get("x_embedder.weight")
    layers = _count(state, "transformer_blocks.")
    singles = _count(state, "single_transformer_blocks.")
    norm = "transformer_blocks.0.attn.norm_q.weight" if layers else "single_transformer_blocks.0.attn.norm_q.weight"
    head = get(norm)[0]
    config = {
        "patch_size": 1,
        "in_channels": in_channels,
        "num_layers": layers,
        "num_single_layers": singles,
        "attention_head_dim": head,
        "num_attention_heads": inner // head,
        "joint_attention_dim": get("context_embedder.weight")[1],
        "pooled_projection_dim": get("time_text_embed.text_embedder.linear_1.weight")[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in state,
        "axes_dims_rope": flux_rope_axes(head),
        "num_mode": get("controlnet_mode_embedder.weight")[0] if "controlnet_mode_embedder.weight" in state else None,
        "conditioning_embedding_channels": None,
    }
    hint_in = get("controlnet_x_embedder.weight")[1]
    if "input_hint_block.conv_out.weight" in state:  # XLabs "-diffusers": a pixel hint, unfolded into tokens
        channels = get("input_hint_block.conv_out.weight")[0]
        width = get("input_hint_block.conv_in.weight")[0]
        patch = math.isqrt(max(in_channels // max(channels, 1), 1))
        if width != XLABS_HINT_WIDTHS[0] or patch * patch * channels != in_channels or hint_in != in_channels:
            raise ModelLoadError(
                f"ControlNet {name!r}: its pixel-hint embedder ({width} wide, {channels} channels into "
                f"{hint_in}-wide tokens for a {in_channels}-wide latent) is not the XLabs layout diffusers' "
                "FluxControlNetModel has; the file is a variant Diffusers Studio does not support. " + _FIX + "."
            )
        config.update(patch_size=patch, conditioning_embedding_channels=channels)
    elif hint_in != in_channels:
        raise ModelLoadError(
            f"ControlNet {name!r} takes {hint_in - in_channels} extra hint channels besides the "
            f"{in_channels}-wide latent: it is an inpainting ControlNet (hint + mask), which Apply Diffusers "
            "ControlNet does not feed. For inpainting use Diffusers Inpaint (or FLUX.1 Fill); for structure "
            "select a Canny/Depth/Union ControlNet."
        )
    return config


def sd3_config(state: dict, name: str) -> dict:
    """SD3ControlNetModel config from diffusers-named weights."""
    get = _getter(state, name, "an SD3 / SD3.5 ControlNet")
    inner, hint_in, patch, _ = get("pos_embed_input.proj.weight")
    joint = "context_embedder.weight" in state
    own_pos = "pos_embed.proj.weight" in state
    in_channels = get("pos_embed.proj.weight")[1] if own_pos else hint_in
    qk_norm = "transformer_blocks.0.attn.norm_q.weight" in state
    head = get("transformer_blocks.0.attn.norm_q.weight")[0] if qk_norm else SD3_HEAD_DIM
    if inner % head:
        raise ModelLoadError(
            f"ControlNet {name!r} is {inner} wide, which does not split into {head}-wide attention heads as "
            "every SD3 / SD3.5 ControlNet does; the file is damaged or a variant Diffusers Studio does not "
            "support. " + _FIX + "."
        )
    if hint_in != in_channels:
        raise ModelLoadError(
            f"ControlNet {name!r} takes {hint_in - in_channels} extra hint channels besides the "
            f"{in_channels}-channel latent: it is an inpainting ControlNet (hint + mask, e.g. "
            "alimama-creative/SD3-Controlnet-Inpainting), which Apply Diffusers ControlNet does not feed. "
            "For inpainting use Diffusers Inpaint; for structure select a Canny/Depth/Pose ControlNet."
        )
    attn2 = sorted({int(m.group(1)) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.attn2\.", k))})
    config = {
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": _count(state, "transformer_blocks."),
        "attention_head_dim": head,
        "num_attention_heads": inner // head,
        "pooled_projection_dim": get("time_text_embed.text_embedder.linear_1.weight")[1],
        "out_channels": in_channels,
        "extra_conditioning_channels": 0,
        "dual_attention_layers": tuple(attn2),
        "qk_norm": "rms_norm" if qk_norm else None,
        "force_zeros_for_pooled_projection": joint,
    }
    if joint:
        config.update(joint_attention_dim=get("context_embedder.weight")[1],
                      caption_projection_dim=get("context_embedder.weight")[0])
    else:
        config.update(joint_attention_dim=None)
    if own_pos:
        grid = get("pos_embed.pos_embed")[1]
        config.update(pos_embed_max_size=int(round(grid ** 0.5)))
    else:  # SD3.5: the transformer's position embedding is lent at run time
        config.update(pos_embed_max_size=None, pos_embed_type=None, use_pos_embed=False)
    return config


# ------------------------------------------------------------------ entry


SIGNED_HINT = (2.0, -1.0)  # VaeImageProcessor's normalisation: 0..1 pixels -> -1..1
SD35_CANNY_HINT = (127.5, 0.5)  # Stability's sd3_infer for control_type 1: pixels * 255 * 0.5 + 0.5


def hint_affine(state: dict, kind: str) -> tuple:
    """(a, b): the VAE encodes pixels * a + b as this ControlNet's hint.

    Stability's SD3.5 files carry a `control_type` scalar (0 blur, 1 canny, 2 depth). Their
    reference inference (sd3_infer.py) feeds a canny map to the VAE as pixels * 127.5 + 0.5,
    not rescaled to -1..1 (the SD3.5-Large canny model card does the same with an image processor
    without normalisation); blur and depth maps go in as 2 * pixels - 1, like every other hint.
    """
    if kind == SD35_STABILITY and "control_type" in state and round(float(state["control_type"].item())) == 1:
        return SD35_CANNY_HINT
    return SIGNED_HINT


def load_file(state: dict, kind: str, name: str):
    """(family, module) for a transformer-ControlNet state dict of layout `kind` (from `kind_of`)."""
    from diffusers import FluxControlNetModel, SD3ControlNetModel

    if kind in (FLUX_DIFFUSERS, FLUX_XLABS):
        if kind == FLUX_XLABS:
            state = xlabs_to_diffusers(state, name)
        config = flux_config(state, name)
        module = _assign(lambda: FluxControlNetModel(**config), state, "Flux ControlNet", name)
        return FLUX, module
    if kind == SD35_STABILITY:
        state = sd35_to_diffusers(state, name)
    config = sd3_config(state, name)
    module = _assign(lambda: SD3ControlNetModel(**config), state, "SD3 ControlNet", name)
    return SD3, module
