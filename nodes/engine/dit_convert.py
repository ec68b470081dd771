"""Key conversion of Flux.1 / SD3 weights into the diffusers / transformers layouts.

* SD3/SD3.5 (Stability's `joint_blocks.*` names): diffusers' own
  `convert_sd3_transformer_checkpoint_to_diffusers`, which reads every width it
  needs from the tensors.
* Flux.1 (BFL's `double_blocks.*` / `single_blocks.*` names): converted here.
  diffusers' `convert_flux_transformer_checkpoint_to_diffusers` fixes the
  width of the single blocks' fused projection at 3072 (the real model's),
  so it cannot split a narrower model; this converter reads the width from
  `img_in` and is otherwise the same mapping (fused q/k/v split in three, the
  single blocks' `linear1` into q, k, v and the 4x-wide MLP input, the final
  modulation's (shift, scale) halves swapped into diffusers' (scale, shift)).
  Split parts are copied, as diffusers' converters do: a view into the fused
  tensor would keep all of it alive and starts at an offset, and CPU matmul
  kernels then round differently from a freshly allocated weight.
* diffusers-layout transformer files are already in the target layout.
* CLIP towers (Hugging Face layout in every Flux/SD3 file) and T5 encoders
  need only their prefixes removed and the few keys the modules do not hold.
"""
from __future__ import annotations

import re

import torch

from .dit_detect import DIFFUSERS, FLUX, SD3, TransformerInfo

# BFL name -> diffusers name, outside the blocks.
_FLUX_TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
# Inside double_blocks.N -> transformer_blocks.N (fused q/k/v handled apart).
_FLUX_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
# Inside single_blocks.N -> single_transformer_blocks.N (linear1 handled apart).
_FLUX_SINGLE = {
    "modulation.lin": "norm.linear",
    "linear2": "proj_out",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
}
_IMAGE_QKV = ("to_q", "to_k", "to_v")
_TEXT_QKV = ("add_q_proj", "add_k_proj", "add_v_proj")
_BLOCK = re.compile(r"(double_blocks|single_blocks)\.(\d+)\.(.+)\.(weight|bias|scale)$")


def swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """(shift, scale) -> (scale, shift): the original final norm's order vs diffusers'."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def flux_to_diffusers(state: dict) -> dict:
    """BFL-named Flux.1 transformer weights (prefix removed) in diffusers names.

    Raises KeyError naming a key that has no diffusers counterpart, so a file
    with unexpected extra weights is reported rather than half-loaded.
    `state` is emptied as it goes, so each fused tensor is freed once split
    (the peak stays near one copy of the model, 24 GB for FLUX.1 in bf16).
    """
    width = int(state["img_in.weight"].shape[0])
    out = {}
    for key in list(state):
        value = state.pop(key)
        match = _BLOCK.match(key)
        if match is None:
            base, _, end = key.rpartition(".")
            if base == "final_layer.adaLN_modulation.1":
                out[f"norm_out.linear.{end}"] = swap_halves(value)
            elif base in _FLUX_TOP:
                out[f"{_FLUX_TOP[base]}.{end}"] = value
            else:
                raise KeyError(key)
            continue
        kind, index, inner, end = match.groups()
        end = "weight" if end == "scale" else end
        if kind == "double_blocks":
            target = f"transformer_blocks.{index}."
            if inner in ("img_attn.qkv", "txt_attn.qkv"):
                names = _IMAGE_QKV if inner == "img_attn.qkv" else _TEXT_QKV
                for name, part in zip(names, value.chunk(3, dim=0)):
                    out[f"{target}attn.{name}.{end}"] = part.clone()
            elif inner in _FLUX_DOUBLE:
                out[f"{target}{_FLUX_DOUBLE[inner]}.{end}"] = value
            else:
                raise KeyError(key)
        else:
            target = f"single_transformer_blocks.{index}."
            if inner == "linear1":
                q, k, v, mlp = torch.split(value, (width, width, width, value.shape[0] - 3 * width), dim=0)
                for name, part in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", mlp)):
                    out[f"{target}{name}.{end}"] = part.clone()
            elif inner in _FLUX_SINGLE:
                out[f"{target}{_FLUX_SINGLE[inner]}.{end}"] = value
            else:
                raise KeyError(key)
    return out


def transformer_to_diffusers(info: TransformerInfo, state: dict) -> dict:
    """A transformer's weights (prefix removed) in diffusers names, whatever their layout.

    Consumes `state` (converted tensors are popped from it).
    """
    if info.layout == DIFFUSERS:
        return state
    if info.family == FLUX:
        return flux_to_diffusers(state)
    if info.family == SD3:
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        # diffusers' converter pops what it converts; whatever is left has no diffusers name.
        out = convert_sd3_transformer_checkpoint_to_diffusers(state)
        if state:
            raise KeyError(sorted(state)[0])
        return out
    raise ValueError(f"unknown family {info.family!r}")


# ------------------------------------------------------------ text encoders

_CLIP_IGNORED = ("text_model.embeddings.position_ids", "logit_scale", "embeddings.position_ids")


def clip_state(state: dict) -> dict:
    """A CLIP tower's weights with `text_model.` on every tower key (HF layout)."""
    out = {}
    for key, value in state.items():
        if key in _CLIP_IGNORED:
            continue
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[key] = value
    return out


def t5_state(state: dict) -> dict:
    """A T5 encoder's weights with both copies of the tied token embedding.

    Files carry `shared.weight`, `encoder.embed_tokens.weight` or both; the
    module holds both names for one tied matrix.
    """
    out = {k: v for k, v in state.items() if not k.startswith("decoder.") and k != "lm_head.weight"}
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    if "encoder.embed_tokens.weight" not in out and "shared.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out
