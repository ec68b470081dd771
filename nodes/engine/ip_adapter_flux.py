"""IP-Adapter on Flux.1 (XLabs layout) as a sampling hook: diffusers' processor, for one run.

diffusers' `FluxPipeline.load_ip_adapter` swaps the attention processor of
every double-stream block for `FluxIPAdapterAttnProcessor` and gives the
transformer an `encoder_hid_proj`. That processor runs the usual joint
attention and, beside it, attends from the image tokens' queries (after
`norm_q`, before the rotary embedding) to the adapter's image tokens
through `to_k_ip` / `to_v_ip` (with biases); it returns that output as a
third value, which `FluxTransformerBlock` adds to the image stream after
the feed-forward, ungated. The single-stream blocks are not touched.

Here the cached transformer is never rewritten. `FluxIPAdapterHook` (a
DS_MODEL patch) wraps the processor it finds on each double block for one
run (`begin`) and puts the same object back (`end`); the wrapper calls the
wrapped processor (the plain one, or another adapter's wrapper: adapters
stack and their outputs add up, as diffusers sums them) and returns the
block's three-value form. `before_unet` picks each batch row's tokens by
`StepContext.row_roles`: positive rows the reference image, negative rows
(true CFG) the black picture FluxPipeline encodes as its default
`negative_ip_adapter_image`; outside the step window the adapter is off.

A mask (not in diffusers, whose Flux processor ignores ip_adapter_masks)
limits each reference image to a region: its attention output is computed
per image and multiplied by the mask on the packed token grid, with the
rule the UNet adapters use (ip_adapter.downsample_mask).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from . import hooks
from .components import ModelBundle
from .ip_adapter import IPAdapterHook, _RunState, prepare_mask
from .ip_adapter_loading import IPAdapter

logger = logging.getLogger(__name__)


def double_block_names(transformer) -> list[str]:
    """The attention modules the XLabs files number (double_blocks.N = transformer_blocks.N.attn)."""
    return [f"transformer_blocks.{i}.attn" for i in range(len(getattr(transformer, "transformer_blocks", ())))]


def check_flux_fit(adapter: IPAdapter, model: ModelBundle) -> list[str]:
    """The double-block attention names, after checking the adapter's layers fit them."""
    transformer = model.denoiser
    names = double_block_names(transformer)
    width = int(getattr(transformer.config, "joint_attention_dim", 0) or 0)
    fits = len(names) == adapter.weights.num_layers and width == adapter.cross_attention_dim
    if fits:
        for index, name in enumerate(names):
            attn = transformer.get_submodule(name)
            expected = (int(attn.to_q.weight.shape[0]), width)
            if tuple(adapter.weights.to_k_ip[index].shape) != expected:
                fits = False
                break
    if not fits:
        raise ValueError(
            f"ip_adapter: '{adapter.name}' was made for a Flux transformer with {adapter.weights.num_layers} "
            f"double-stream blocks and {adapter.cross_attention_dim}-wide text tokens, but the model "
            f"'{model.name}' has {len(names)} blocks and {width}-wide ones: use the Flux.1 IP-Adapter made "
            "for this checkpoint (XLabs-AI flux-ip-adapter for FLUX.1 dev / schnell)"
        )
    return names


class FluxIPAttention:
    """Adds one adapter's image attention to a double block's processor (FluxIPAdapterAttnProcessor)."""

    def __init__(self, previous, state: _RunState, to_k, to_v, k_bias, v_bias, scale: float):
        self.previous = previous
        self.state = state
        self.to_k, self.to_v, self.k_bias, self.v_bias = to_k, to_v, k_bias, v_bias
        self.scale = scale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        out = self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb, **kwargs)
        batch = hidden_states.shape[0]
        tokens = self.state.rows_for(batch)
        if tokens is None or encoder_hidden_states is None:
            return out
        if getattr(attn, "fused_projections", False):
            query = attn.to_qkv(hidden_states).chunk(3, dim=-1)[0]
        else:
            query = attn.to_q(hidden_states)
        query = attn.norm_q(query.unflatten(-1, (attn.heads, -1))).transpose(1, 2)  # [B, H, S, D]
        if self.state.masks is None:
            added = self.scale * self._attend(attn, query, tokens.reshape(batch, -1, tokens.shape[-1]))
        else:
            added = None
            for i in range(tokens.shape[1]):
                ip = self._attend(attn, query, tokens[:, i])
                ip = self.scale * (ip * self.state.mask_for(i, batch, ip.shape[1], 1, ip))
                added = ip if added is None else added + ip
        if len(out) == 3:  # another adapter's wrapper underneath: the outputs add up
            return out[0], out[1], out[2] + added
        return out[0], out[1], added

    def _attend(self, attn, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        batch, heads = query.shape[0], attn.heads
        key = F.linear(tokens, self.to_k, self.k_bias).view(batch, -1, heads, attn.head_dim).transpose(1, 2)
        value = F.linear(tokens, self.to_v, self.v_bias).view(batch, -1, heads, attn.head_dim).transpose(1, 2)
        ip = F.scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
        return ip.transpose(1, 2).reshape(batch, -1, heads * attn.head_dim).to(query.dtype)


class FluxIPAdapterHook(IPAdapterHook):
    """One applied Flux.1 IP-Adapter (a DS_MODEL patch); see the module docstring.

    The UNet adapter's hook with another `begin`: the same checks, step
    window, per-row token choice (`before_unet`) and restore (`end`).
    """

    transformer_ready = True  # FlowFamily.check_latent lets it through

    def __repr__(self) -> str:
        return (f"FluxIPAdapterHook({self.adapter.name!r}, weight={self.weight}, "
                f"window=({self.start_percent}, {self.end_percent}))")

    def begin(self, run: hooks.RunContext, role: str) -> None:
        model: ModelBundle = run.model
        names = check_flux_fit(self.adapter, model)
        if self._mask_is_empty() or self.weight == 0.0:
            return
        projection, to_k, to_v, k_bias, v_bias = self._run_weights(run)
        pos, neg = self._project(projection, run)
        masks = prepare_mask(self.mask, self.embeds.count, run.pixel_size)
        self._state = _RunState(pos, neg, masks)
        transformer = model.denoiser
        for index, name in enumerate(names):
            attn = transformer.get_submodule(name)
            previous = attn.processor
            attn.set_processor(FluxIPAttention(previous, self._state, to_k[index], to_v[index], k_bias[index],
                                               v_bias[index], self.weight))
            self._installed.append((attn, previous))
