"""SD3 / SD3.5 IP-Adapter files (InstantX layout) read into diffusers' own modules.

InstantX's SD3.5-Large IP-Adapter (`ip-adapter.bin`, or a .safetensors of
the same keys) holds, like the h94 files, `image_proj.*` and
`ip_adapter.N.*`, but both differ in kind:

- `image_proj.*` is a resampler conditioned on the timestep
  (`time_embedding.linear_1/2`; blocks `layers.i.0` attention, `.1` feed
  forward with its norm, `.2` an adaLN projection): diffusers'
  `IPAdapterTimeImageProjection`, so the image tokens change every step;
- `ip_adapter.N.*` (one per attention processor of the transformer, in
  `attn_processors` order) has `norm_ip` (an adaLN over the image tokens
  fed the resampler's timestep embedding), `to_k_ip` / `to_v_ip` and three
  RMS norms (`norm_q`, `norm_k`, `norm_ip_k`): the parameters of diffusers'
  `SD3IPAdapterJointAttnProcessor2_0`.

The keys are renamed as `SD3Transformer2DLoadersMixin` renames them and
loaded strictly into those classes (so the computation is diffusers'),
held by `SD3IPAdapterWeights`, never attached to a transformer.
"""
from __future__ import annotations

import re

import torch
from torch import nn

SD3 = "sd3"  # IPAdapter.target of these files
TIME_RESAMPLER = "time-resampler"  # IPAdapter.variant

_LAYER = re.compile(r"^ip_adapter\.(\d+)\.(.+)$")
# InstantX resampler block keys -> IPAdapterTimeImageProjectionBlock's (diffusers' rename).
_BLOCK_RENAMES = (
    ("0.norm1.", "ln0."), ("0.norm2.", "ln1."), ("0.to_q.", "attn.to_q."), ("0.to_kv.", "attn.to_kv."),
    ("0.to_out.", "attn.to_out.0."), ("1.0.", "adaln_norm."), ("1.1.", "ff.net.0.proj."),
    ("1.3.", "ff.net.2."), ("2.1.", "adaln_proj."),
)


def is_instantx_sd3(state: dict) -> bool:
    """An SD3 / SD3.5 IP-Adapter (a timestep-conditioned resampler, norm_ip layers)."""
    return "image_proj.time_embedding.linear_1.weight" in state or any(
        re.match(r"^ip_adapter\.\d+\.norm_ip\.", k) for k in state
    )


class SD3IPAdapterWeights(nn.Module):
    """The resampler and the per-attention-layer parameters of one SD3 adapter file."""

    def __init__(self, projection: nn.Module, layers: list):
        super().__init__()
        self.projection = projection  # IPAdapterTimeImageProjection
        self.layers = nn.ModuleList(layers)  # SD3IPAdapterJointAttnProcessor2_0 modules (parameters only)

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _projection_state(proj: dict) -> dict:
    out = {}
    for key, value in proj.items():
        m = re.match(r"^layers\.(\d+)\.(.+)$", key)
        if m:
            rest = m.group(2)
            for old, new in _BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            key = f"layers.{m.group(1)}.{rest}"
        out[key] = value
    return out


def _projection(proj: dict, name: str):
    from diffusers.models.embeddings import IPAdapterTimeImageProjection

    from .ip_adapter_loading import IPAdapterLoadError

    state = _projection_state(proj)
    needed = ("proj_in.weight", "proj_out.weight", "latents", "layers.0.attn.to_q.weight",
              "time_embedding.linear_1.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise IPAdapterLoadError(
            f"ipadapter_file: '{name}' is an SD3 IP-Adapter without image_proj.{missing[0]}: the file is incomplete"
        )
    depth = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    hidden = int(state["proj_in.weight"].shape[0])
    module = IPAdapterTimeImageProjection(
        embed_dim=int(state["proj_in.weight"].shape[1]),
        output_dim=int(state["proj_out.weight"].shape[0]),
        hidden_dim=hidden,
        depth=depth,
        heads=max(int(state["layers.0.attn.to_q.weight"].shape[0]) // 64, 1),
        num_queries=int(state["latents"].shape[1]),
        timestep_in_dim=int(state["time_embedding.linear_1.weight"].shape[1]),
    )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise IPAdapterLoadError(
            f"ipadapter_file: '{name}' has an SD3 image projection of an unexpected shape ({exc})"
        ) from exc
    return module


def _layers(state: dict, name: str) -> list:
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0

    from .ip_adapter_loading import IPAdapterLoadError

    grouped: dict[int, dict] = {}
    for key, value in state.items():
        m = _LAYER.match(key)
        if m:
            grouped.setdefault(int(m.group(1)), {})[m.group(2)] = value
    if not grouped or sorted(grouped) != list(range(len(grouped))):
        raise IPAdapterLoadError(
            f"ipadapter_file: '{name}' has SD3 IP-Adapter layers numbered {sorted(grouped)[:6]}...; "
            "expected ip_adapter.0 ... ip_adapter.N-1: the file is incomplete"
        )
    layers = []
    for index in range(len(grouped)):
        params = grouped[index]
        try:
            to_k = params["to_k_ip.weight"]
            module = SD3IPAdapterJointAttnProcessor2_0(
                hidden_size=int(to_k.shape[0]),
                ip_hidden_states_dim=int(to_k.shape[1]),
                head_dim=int(params["norm_q.weight"].shape[0]),
                timesteps_emb_dim=int(params["norm_ip.linear.weight"].shape[1]),
            )
            module.load_state_dict(params, strict=True)
        except (KeyError, RuntimeError) as exc:
            raise IPAdapterLoadError(
                f"ipadapter_file: '{name}' has an SD3 IP-Adapter layer ip_adapter.{index} that does not read as "
                f"diffusers' SD3IPAdapterJointAttnProcessor2_0 ({exc}): the file is damaged"
            ) from exc
        layers.append(module)
    return layers


def build(state: dict, name: str, dtype: torch.dtype):
    """(weights, embed width, token width) of an InstantX-layout state dict (flat keys)."""
    from .ip_adapter_loading import IPAdapterLoadError

    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    projection = _projection(proj, name)
    layers = _layers(state, name)
    embed = int(projection.proj_in.weight.shape[1])
    tokens = int(projection.proj_out.weight.shape[0])
    temb = int(projection.time_embedding.linear_2.weight.shape[0])
    for index, layer in enumerate(layers):
        if int(layer.to_k_ip.weight.shape[1]) != tokens or int(layer.norm_ip.linear.weight.shape[1]) != temb:
            raise IPAdapterLoadError(
                f"ipadapter_file: '{name}' has layer ip_adapter.{index} for {int(layer.to_k_ip.weight.shape[1])}-wide "
                f"image tokens, but its resampler makes {tokens}-wide ones: the file is damaged"
            )
    weights = SD3IPAdapterWeights(projection, layers).to(dtype).eval().requires_grad_(False)
    return weights, embed, tokens
