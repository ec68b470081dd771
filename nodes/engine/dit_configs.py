"""Configs of Flux.1 / SD3 components: shipped full-size ones, completed from tensor shapes.

A single file carries no configuration and nothing may be fetched, so the
pack ships the real configs under `configs/` (written from the published
model cards and config files: layer counts, widths, scheduler shifts):

* per variant (`flux_dev`, `flux_schnell`, `flux_fill`, `sd3_medium`,
  `sd35_medium`, `sd35_large`): `transformer.json`, `scheduler_config.json`;
* per family (`flux`, `sd3`): `vae.json` and the text encoders
  (`text_encoder.json` CLIP-L, Flux `text_encoder_2.json` / SD3
  `text_encoder_3.json` T5-XXL, SD3 `text_encoder_2.json` OpenCLIP bigG).

Detection picks the shipped config; every size the tensors show (widths,
block counts, head width where a qk-norm weight has it, input/output
channels, position grid) then overrides it, so a test-scale export goes
through the same path as the real weights and loads as exactly the model it
came from. What shapes cannot tell:

* Flux rotary axes: (16, 56, 56) for the real 128-wide heads; a narrower
  head (test scale) splits as (d/4, d/4, d/2), diffusers' dummy-model
  convention ((4, 4, 8) for 16).
* SD3 head width when there is no qk-norm (SD3 medium): 64, as in every
  MMDiT (Stability sizes them as width = 64 x depth).
* VAE: narrower than 128 (test scale) -> 8 GroupNorm groups, sample size 64
  (the pack's tiny-model convention); scaling and shift factors are always
  the family's (they define the latent space the transformer was trained in).
* CLIP heads/activation: the pack's rule (`families.text_facts`).
* T5: every size is in the shapes (the relative-attention table has one
  column per head).
"""
from __future__ import annotations

import copy
import json
import re
from functools import lru_cache

from .dit_detect import FLUX, SD3, TransformerInfo
from .families import CONFIG_DIR, REAL_VAE_MIN_WIDTH, ModelLoadError, text_facts
from .single_file import clip_shape_fields, vae_shape_fields

FLUX_REAL_HEAD_DIM = 128
SD3_HEAD_DIM = 64


@lru_cache(maxsize=None)
def _read(folder: str, component: str) -> dict:
    with open(CONFIG_DIR / folder / f"{component}.json", encoding="utf-8") as fh:
        data = json.load(fh)
    return {k: v for k, v in data.items() if k != "_comment"}


def shipped(folder: str, component: str) -> dict:
    """A fresh copy of a shipped config (configs/<folder>/<component>.json)."""
    return copy.deepcopy(_read(folder, component))


def scheduler_config(info: TransformerInfo) -> dict:
    return shipped(info.config_folder, "scheduler_config")


def _count(state: dict, prefix: str) -> int:
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := rx.match(k))})


def _getter(items: dict, message: str):
    """get(key) -> the shape of `items[key]` (a tensor, or already a shape tuple).

    message: the ModelLoadError text when the key is missing, with {key}.
    A GGUF-quantized tensor stores bytes per row; its quant_shape is the real shape.
    """

    def get(key: str) -> tuple:
        if key not in items:
            raise ModelLoadError(message.replace("{key}", repr(key)))
        value = items[key]
        return tuple(value) if isinstance(value, tuple) else tuple(getattr(value, "quant_shape", value.shape))

    return get


def flux_rope_axes(head: int, real: list | tuple = (16, 56, 56)) -> list:
    """Flux rotary axes for a head width: the real split for 128-wide heads, (d/4, d/4, d/2) for a
    narrower (test-scale) head, diffusers' dummy-model convention. Shapes cannot tell them."""
    return list(real) if head == FLUX_REAL_HEAD_DIM else [head // 4, head // 4, head // 2]


def _small_vae_facts(config: dict) -> dict:
    """A VAE narrower than any real one is test-scale: the pack's tiny-model conventions."""
    if config["block_out_channels"][0] < REAL_VAE_MIN_WIDTH:
        config.update(norm_num_groups=8, sample_size=64)
    return config


def transformer_config(info: TransformerInfo, state: dict, name: str) -> dict:
    """The diffusers transformer config for converted weights `state` (diffusers names)."""
    config = shipped(info.config_folder, "transformer")
    get = _getter(
        state,
        f"Transformer file {name!r}: the weights are incomplete (no {{key}} after conversion). The file is "
        "damaged or a variant Diffusers Studio does not support.",
    )
    if info.family == FLUX:
        inner, in_channels = get("x_embedder.weight")
        out_channels = get("proj_out.weight")[0]
        head = get("transformer_blocks.0.attn.norm_q.weight")[0] if _count(
            state, "transformer_blocks."
        ) else get("single_transformer_blocks.0.attn.norm_q.weight")[0]
        config.update(
            in_channels=in_channels,
            out_channels=None if out_channels == in_channels else out_channels,
            num_layers=_count(state, "transformer_blocks."),
            num_single_layers=_count(state, "single_transformer_blocks."),
            attention_head_dim=head,
            num_attention_heads=inner // head,
            joint_attention_dim=get("context_embedder.weight")[1],
            pooled_projection_dim=get("time_text_embed.text_embedder.linear_1.weight")[1],
            guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in state,
        )
        config["axes_dims_rope"] = flux_rope_axes(head, config["axes_dims_rope"])
        return config
    if info.family == SD3:
        inner, in_channels, patch, _ = get("pos_embed.proj.weight")
        grid = get("pos_embed.pos_embed")[1]
        side = int(round(grid ** 0.5))
        qk_norm = "transformer_blocks.0.attn.norm_q.weight" in state
        head = get("transformer_blocks.0.attn.norm_q.weight")[0] if qk_norm else SD3_HEAD_DIM
        attn2 = sorted({int(m.group(1)) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.attn2\.", k))})
        config.update(
            patch_size=patch,
            in_channels=in_channels,
            out_channels=get("proj_out.weight")[0] // (patch * patch),
            num_layers=_count(state, "transformer_blocks."),
            attention_head_dim=head,
            num_attention_heads=inner // head,
            caption_projection_dim=get("context_embedder.weight")[0],
            joint_attention_dim=get("context_embedder.weight")[1],
            pooled_projection_dim=get("time_text_embed.text_embedder.linear_1.weight")[1],
            pos_embed_max_size=side,
            dual_attention_layers=attn2,
            qk_norm="rms_norm" if qk_norm else None,
        )
        return config
    raise ValueError(f"unknown family {info.family!r}")


def vae_config(family: str, shapes: dict, name: str) -> dict:
    """AutoencoderKL config from LDM-layout VAE shapes (prefix removed)."""
    config = shipped(family, "vae")
    config.update(vae_shape_fields(shapes, name))
    return _small_vae_facts(config)


def diffusers_vae_config(family: str, shapes: dict, name: str) -> dict:
    """AutoencoderKL config from diffusers-layout VAE shapes (prefix removed)."""
    get = _getter(
        shapes,
        f"VAE file {name!r}: the weights are incomplete (no {{key}}). The file is damaged: select "
        "ae.safetensors (FLUX.1) or the SD3 VAE.",
    )
    levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    config = shipped(family, "vae")
    config.update(
        in_channels=get("encoder.conv_in.weight")[1],
        out_channels=get("decoder.conv_out.weight")[0],
        latent_channels=get("decoder.conv_in.weight")[1],
        block_out_channels=[get(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in levels],
        layers_per_block=_count(shapes, "encoder.down_blocks.0.resnets."),
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in shapes,
    )
    return _small_vae_facts(config)


def clip_config(family: str, component: str, shapes: dict, name: str) -> dict:
    """CLIPTextConfig dict from HF-layout CLIP shapes (text_model.* keys)."""
    config = shipped(family, component)
    sizes = clip_shape_fields(shapes, name)
    config.update(
        hidden_size=sizes["hidden"],
        vocab_size=sizes["vocab"],
        max_position_embeddings=sizes["positions"],
        num_hidden_layers=sizes["layers"],
        intermediate_size=sizes["intermediate"],
        projection_dim=sizes["projection"],
    )
    config.update(text_facts(sizes["hidden"]))
    return config


def t5_config(family: str, component: str, shapes: dict, name: str) -> dict:
    """T5Config dict from T5 encoder shapes (HF layout, prefix removed)."""
    get = _getter(
        shapes,
        f"Text encoder file {name!r}: the T5 weights are incomplete (no {{key}}). The file is damaged or not a "
        "T5 encoder: select t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors.",
    )

    config = shipped(family, component)
    vocab, d_model = get("shared.weight")
    relative = get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    heads = relative[1]
    layers = _count(shapes, "encoder.block.")
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    d_ff = get("encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight"))[0]
    config.update(
        vocab_size=vocab,
        d_model=d_model,
        d_ff=d_ff,
        num_heads=heads,
        d_kv=get("encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads,
        num_layers=layers,
        num_decoder_layers=layers,
        relative_attention_num_buckets=relative[0],
    )
    if not gated:
        config.update(feed_forward_proj="relu", is_gated_act=False, dense_act_fn="relu")
    return config
