"""IP-Adapter on SD3 / SD3.5 (InstantX layout) as a sampling hook, for one run.

diffusers' `StableDiffusion3Pipeline.load_ip_adapter` replaces every
attention processor of the transformer with
`SD3IPAdapterJointAttnProcessor2_0` and gives it an `image_proj`
(`IPAdapterTimeImageProjection`). Each step the transformer runs the
resampler on the SigLIP hidden states with the step's timestep (the image
tokens and a timestep embedding `temb` change as the run goes), and every
processor, beside the usual joint attention, lets the image tokens' queries
(the layer's own `to_q`, RMS-normed by the adapter's `norm_q`) attend to
the image tokens' keys (`to_k`, `norm_k`) next to the adapter tokens'
(`norm_ip(tokens, temb)` -> `to_k_ip` -> `norm_ip_k`; values `to_v` /
`to_v_ip`), and adds `scale *` that output before the layer's `to_out`.

Here the cached transformer is never rewritten. `SD3IPAdapterHook` (a
DS_MODEL patch) wraps the processor it finds on each attention module for
one run (`begin`), runs the resampler per step for the batch rows it is
given (`before_unet`: positive rows the reference image, negative rows the
zeros the pipeline uses, outside the step window nothing), and puts the
same processor objects back (`end`, also on cancel). The image attention
reuses the q/k/v the wrapped processor computed for the layer
(`ProjectionCapture`), as diffusers' processor does. The wrapper adds
`to_out[0].weight @ (scale * ip)` to what the wrapped processor returned:
`to_out` is linear, so this equals diffusers' sum before it, and several
adapters stack (their additions sum; diffusers loads one SD3 adapter only).

A mask (not in diffusers) limits each reference image to a region on the
patch grid, as for Flux (ip_adapter.downsample_mask); with a mask each
reference image attends on its own, without one several images' tokens
are one sequence (what the pipeline does with a list of images).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from . import hooks
from .components import ModelBundle
from .ip_adapter import IPAdapterHook, _RunState, prepare_mask
from .ip_adapter_loading import IPAdapter



def attention_names(transformer) -> list[str]:
    """The attention modules in `attn_processors` order, which the InstantX files number."""
    return [name[: -len(".processor")] for name in transformer.attn_processors]


def check_sd3_fit(adapter: IPAdapter, model: ModelBundle) -> list[str]:
    """The attention module names, after checking the adapter's layers fit them."""
    transformer = model.denoiser
    names = attention_names(transformer)
    config = transformer.config
    inner = int(config.attention_head_dim) * int(config.num_attention_heads)
    layers = adapter.weights.layers
    fits = len(names) == len(layers) and adapter.cross_attention_dim == inner
    if fits:
        for layer in layers:
            if tuple(layer.to_k_ip.weight.shape) != (inner, inner) or \
                    int(layer.norm_q.weight.shape[0]) != int(config.attention_head_dim):
                fits = False
                break
    if not fits:
        raise ValueError(
            f"ip_adapter: '{adapter.name}' was made for an SD3 transformer with {len(layers)} attention layers "
            f"{adapter.cross_attention_dim} wide, but the model '{model.name}' has {len(names)} layers {inner} "
            "wide: InstantX's SD3.5-Large-IP-Adapter fits Stable Diffusion 3.5 Large (and Large Turbo) only; use "
            "it with that checkpoint"
        )
    return names


class SD3RunState(_RunState):
    """The per-run state plus the step's timestep embedding (`temb`, one row per batch row)."""

    def __init__(self, embeds_pos, embeds_neg, masks):
        super().__init__(embeds_pos, embeds_neg, masks)
        self.temb = None


def _fused(attn) -> bool:
    return bool(getattr(attn, "fused_projections", False)) and getattr(attn, "to_qkv", None) is not None


class ProjectionCapture:
    """Keeps what an attention module's q/k/v projections return for one given tensor while the wrapped
    processor runs, so the adapter's second attention reuses them, as diffusers' processor does, instead
    of computing the three projections again (37 of them per step on SD3.5 medium).

    Forward hooks on `to_q`/`to_k`/`to_v` (or the fused `to_qkv`) keep the first output whose input is
    the very tensor the processor was given (`source`); any other call (another stream, a wrapper that
    transforms the tensor first) is ignored, and the wrapper then computes what it lacks itself."""

    def __init__(self, attn):
        self.names = ("to_qkv",) if _fused(attn) else ("to_q", "to_k", "to_v")
        self.source = None
        self.outputs: dict = {}
        self._handles = [getattr(attn, name).register_forward_hook(self._keeper(name)) for name in self.names]

    def _keeper(self, name: str):
        def keep(_module, args, output):
            if self.source is not None and args and args[0] is self.source and name not in self.outputs:
                self.outputs[name] = output
        return keep

    def run(self, call, hidden_states):
        """`call()` with the projections of `hidden_states` kept; returns (its result, {name: output})."""
        self.source, self.outputs = hidden_states, {}
        try:
            return call(), self.outputs
        finally:
            self.source, self.outputs = None, {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class SD3IPAttention:
    """Adds one adapter's image attention to an attention module's processor (SD3IPAdapterJointAttnProcessor2_0)."""

    def __init__(self, previous, state: SD3RunState, layer, scale: float, capture: ProjectionCapture):
        self.previous = previous
        self.state = state
        self.layer = layer  # SD3IPAdapterJointAttnProcessor2_0: norm_ip, to_k_ip, to_v_ip, norm_q, norm_k, norm_ip_k
        self.scale = scale
        self.capture = capture

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        batch = hidden_states.shape[0]
        tokens = self.state.rows_for(batch)  # [B, N, Q, C]
        call = lambda: self.previous(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)  # noqa: E731
        if tokens is None:
            return call()
        out, kept = self.capture.run(call, hidden_states)
        query, key, value = self._projections(attn, hidden_states, kept)
        head_dim = key.shape[-1] // attn.heads
        split = lambda t: t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # noqa: E731
        layer = self.layer
        query, key, value = layer.norm_q(split(query)), layer.norm_k(split(key)), split(value)
        if self.state.masks is None:
            added = self.scale * self._attend(attn, query, key, value, tokens.reshape(batch, -1, tokens.shape[-1]))
        else:
            added = None
            for i in range(tokens.shape[1]):
                ip = self._attend(attn, query, key, value, tokens[:, i])
                ip = self.scale * (ip * self.state.mask_for(i, batch, ip.shape[1], 1, ip))
                added = ip if added is None else added + ip
        delta = F.linear(added, attn.to_out[0].weight)
        if isinstance(out, tuple):
            return (out[0] + delta, *out[1:])
        return out + delta

    @staticmethod
    def _projections(attn, hidden_states, kept: dict) -> tuple:
        """The layer's q, k, v of `hidden_states`: those the wrapped processor computed, else computed here."""
        if _fused(attn):
            fused = kept.get("to_qkv")
            return (fused if fused is not None else attn.to_qkv(hidden_states)).chunk(3, dim=-1)
        return tuple(kept[name] if name in kept else getattr(attn, name)(hidden_states)
                     for name in ("to_q", "to_k", "to_v"))

    def _attend(self, attn, query, key, value, tokens: torch.Tensor) -> torch.Tensor:
        batch, heads, head_dim, layer = query.shape[0], attn.heads, query.shape[-1], self.layer
        normed = layer.norm_ip(tokens, temb=self.state.temb)
        split = lambda t: t.view(batch, -1, heads, head_dim).transpose(1, 2)  # noqa: E731
        ip_key = layer.norm_ip_k(split(layer.to_k_ip(normed)))
        ip_value = split(layer.to_v_ip(normed))
        ip = F.scaled_dot_product_attention(query, torch.cat([key, ip_key], dim=2),
                                            torch.cat([value, ip_value], dim=2), dropout_p=0.0, is_causal=False)
        return ip.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)


class SD3IPAdapterHook(IPAdapterHook):
    """One applied SD3 / SD3.5 IP-Adapter (a DS_MODEL patch); see the module docstring.

    The UNet adapter's hook with its own `begin` and `before_unet` (the
    resampler runs every step); the same checks, step window and `end`.
    """

    transformer_ready = True  # FlowFamily.check_latent lets it through

    def begin(self, run: hooks.RunContext, role: str) -> None:
        model: ModelBundle = run.model
        names = check_sd3_fit(self.adapter, model)
        if self._mask_is_empty() or self.weight == 0.0:
            return
        weights = self._sd3_weights(run)
        self._projection = weights.projection
        pos, neg = (e.to(run.device, run.dtype) for e in (self.embeds.positive, self.embeds.negative))
        self._state = SD3RunState(pos, neg, prepare_mask(self.mask, self.embeds.count, run.pixel_size))
        transformer = model.denoiser
        self._captures = []
        for index, name in enumerate(names):
            attn = transformer.get_submodule(name)
            previous = attn.processor
            capture = ProjectionCapture(attn)
            self._captures.append(capture)
            attn.set_processor(SD3IPAttention(previous, self._state, weights.layers[index], self.weight, capture))
            self._installed.append((attn, previous))

    def end(self) -> None:
        """Takes the projection hooks off, then puts the processors back (also on cancel)."""
        for capture in getattr(self, "_captures", ()):
            capture.remove()
        self._captures = []
        super().end()

    def _sd3_weights(self, run: hooks.RunContext):
        """The adapter's modules on the run's device and dtype (a copy for this run where they differ)."""
        if self.prepare is not None:
            self.prepare([self.adapter.weights])
        weights = self.adapter.weights
        param = next(weights.parameters())
        if param.device != run.device or param.dtype != run.dtype:
            weights = copy.deepcopy(weights).to(device=run.device, dtype=run.dtype)
        return weights

    @torch.no_grad()
    def before_unet(self, step: hooks.StepContext, run: hooks.RunContext, role: str) -> None:
        state = self._state
        if state is None:
            return
        if not self._active(step, run):
            state.rows, state.temb = None, None
            return
        roles = list(step.row_roles)
        if len(roles) != int(step.x_in.shape[0]):
            raise ValueError(
                f"IP-Adapter: the transformer batch has {int(step.x_in.shape[0])} rows but row_roles lists "
                f"{len(roles)}: a hook widened the batch without describing its rows"
            )
        embeds = torch.stack([state.tokens_neg if r == hooks.NEGATIVE else state.tokens_pos for r in roles])
        rows, count = embeds.shape[0], embeds.shape[1]  # [B, N, T, D]
        timestep = step.timestep.to(run.device).expand(rows * count)
        tokens, temb = self._projection(embeds.flatten(0, 1), timestep)  # the resampler, as the transformer runs it
        state.rows = tokens.unflatten(0, (rows, count))
        state.temb = temb.unflatten(0, (rows, count))[:, 0]  # the timestep's embedding: the same for each image
