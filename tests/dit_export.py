"""Write tiny FLUX.1 / SD3 components the way real files are distributed.

The key mapping comes from ComfyUI's own diffusers<->original maps
(`comfy.utils.flux_to_diffusers`, `comfy.utils.mmdit_to_diffusers`), which
ComfyUI uses to read diffusers-layout transformers, so the exported files
follow the BFL / Stability layout independently of the converters the loader
uses. Layouts: "original" (BFL/Stability names at the top level, as
flux1-dev.safetensors ships), "comfyui" (under model.diffusion_model.),
"diffusers" (the module's own names), and all-in-one checkpoints with the
text encoders and VAE. fp8 exports quantize the transformer's 2-D block
weights to float8_e4m3fn, plain or ComfyUI-"scaled" (a float32 scale_weight
per layer and a scaled_fp8 marker).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ldm_export import _comfy, _save, hf_text_state_dict, vae_to_ldm

COMFY = "model.diffusion_model."
CLIP_L = "text_encoders.clip_l.transformer."
CLIP_G = "text_encoders.clip_g.transformer."
T5XXL = "text_encoders.t5xxl.transformer."
FP8_MAX = 448.0  # largest float8_e4m3fn value


def _apply_map(state: dict, key_map: dict) -> dict:
    """diffusers state -> original names through a ComfyUI map (diffusers key -> target).

    A target is a name, (name, (dim, start, length)) for a slice of a fused
    tensor, or (name, None, fn) for a transformed copy.
    """
    missing = sorted(set(state) - set(key_map))
    if missing:
        raise AssertionError(f"no original name for {missing[:5]}")
    out, pieces = {}, {}
    for key, value in state.items():
        target = key_map[key]
        if isinstance(target, str):
            out[target] = value
        elif target[1] is None:
            out[target[0]] = target[2](value)
        else:
            dim, start, _ = target[1]
            assert dim == 0
            pieces.setdefault(target[0], []).append((start, value))
    for name, parts in pieces.items():
        out[name] = torch.cat([v for _, v in sorted(parts, key=lambda p: p[0])], dim=0)
    return out


def transformer_original(transformer) -> dict:
    """The transformer in BFL (Flux) / Stability (SD3) names, no prefix."""
    utils, _ = _comfy()
    config = transformer.config
    state = transformer.state_dict()
    if "single_transformer_blocks.0.attn.to_q.weight" in state:
        key_map = utils.flux_to_diffusers({
            "depth": config.num_layers, "depth_single_blocks": config.num_single_layers,
            "hidden_size": config.num_attention_heads * config.attention_head_dim,
        })
    else:
        # ComfyUI's map sizes the fused qkv as 64 x depth, Stability's rule.
        assert config.num_attention_heads * config.attention_head_dim == 64 * config.num_layers
        key_map = utils.mmdit_to_diffusers({"depth": config.num_layers})
    return _apply_map(state, key_map)


def quantize_fp8(state: dict, scaled: bool, scale_name: str = "scale_weight") -> dict:
    """2-D block weights as float8_e4m3fn; scaled: ComfyUI's scale_weight form (newer files: weight_scale)."""
    out = {}
    for key, value in state.items():
        if value.ndim == 2 and key.endswith(".weight") and "blocks." in key:
            if scaled:
                scale = value.abs().max().float() / FP8_MAX
                out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
                out[key[: -len("weight")] + scale_name] = scale.reshape(())
            else:
                out[key] = value.to(torch.float8_e4m3fn)
        else:
            out[key] = value
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def save_transformer(transformer, path, layout: str = "original", fp8: str = "") -> Path:
    """A transformer file; layout original / comfyui / diffusers; fp8 "", "fp8", "scaled" or
    "weight_scale" (scaled, with the newer scale name)."""
    if layout == "diffusers":
        state = dict(transformer.state_dict())
    else:
        state = transformer_original(transformer)
    if fp8:
        state = quantize_fp8(
            state, scaled=fp8 != "fp8", scale_name="weight_scale" if fp8 == "weight_scale" else "scale_weight"
        )
    prefix = COMFY if layout == "comfyui" else ""
    return _save({prefix + k: v for k, v in state.items()}, path)


def t5_tensors(t5) -> dict:
    """As t5xxl_fp16.safetensors ships: shared.weight once, encoder.* keys."""
    return {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}


def save_clip(text_encoder, path) -> Path:
    return _save(hf_text_state_dict(text_encoder), path)


def save_t5(t5, path, fp8: str = "") -> Path:
    state = t5_tensors(t5)
    if fp8:
        state = {
            k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 and ".block." in k else v) for k, v in state.items()
        }
    return _save(state, path)


def save_ae(vae, path) -> Path:
    """ae.safetensors: the LDM-layout autoencoder without a prefix."""
    n = len("first_stage_model.")
    return _save({k[n:]: v for k, v in vae_to_ldm(vae).items()}, path)


def save_all_in_one(components: dict, path, fp8: str = "") -> Path:
    """A ComfyUI-layout all-in-one checkpoint of FluxPipeline / SD3 pipeline components."""
    state = transformer_original(components["transformer"])
    if fp8:
        state = quantize_fp8(state, scaled=fp8 == "scaled")
    tensors = {COMFY + k: v for k, v in state.items()}
    tensors.update(vae_to_ldm(components["vae"]))
    tensors.update({CLIP_L + k: v for k, v in hf_text_state_dict(components["text_encoder"]).items()})
    if "text_encoder_3" in components:
        tensors.update({CLIP_G + k: v for k, v in hf_text_state_dict(components["text_encoder_2"]).items()})
        t5 = components["text_encoder_3"]
    else:
        t5 = components["text_encoder_2"]
    if t5 is not None:
        tensors.update({T5XXL + k: v for k, v in t5_tensors(t5).items()})
    return _save(tensors, path)


def save_gguf(transformer, path, qtype_name: str = "Q8_0") -> Path:
    """A GGUF transformer in the original names (as city96's conversions): block matrices quantized
    row-wise where their width allows, the rest F32."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch="flux")
    for key, value in transformer_original(transformer).items():
        array = value.detach().float().contiguous().numpy()
        if value.ndim == 2 and "blocks." in key and value.shape[1] % block == 0:
            writer.add_tensor(key, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(key, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------ ControlNets as people download them

_SD35_CN_NAMES = {  # SD3ControlNetModel single-stream block name -> Stability's MMDiT name
    "attn.to_out.0": "attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
    "norm1.linear": "adaLN_modulation.1",
}


def save_controlnet_file(controlnet, path) -> Path:
    """A diffusers ControlNet's weights alone (the folder's diffusion_pytorch_model.safetensors, no config)."""
    return _save(dict(controlnet.state_dict()), path)


def save_xlabs_controlnet_original(controlnet, path) -> Path:
    """An XLabs-style FluxControlNetModel (pixel hint, double blocks only) in the names of XLabs' own
    flux-*-controlnet*.safetensors: the blocks and embedders through ComfyUI's BFL map, `pos_embed_input`,
    `controlnet_blocks.N`, and the hint embedder as XLabs' Sequential (convs at even indices 0..14)."""
    config = controlnet.config
    assert config.num_single_layers == 0 and config.conditioning_embedding_channels, "XLabs files have neither"
    utils, _ = _comfy()
    key_map = utils.flux_to_diffusers({
        "depth": config.num_layers, "depth_single_blocks": 0,
        "hidden_size": config.num_attention_heads * config.attention_head_dim,
    })
    convs = ["conv_in"] + [f"blocks.{i}" for i in range(len(controlnet.input_hint_block.blocks))] + ["conv_out"]
    for index, conv in enumerate(convs):
        for end in ("weight", "bias"):
            key_map[f"input_hint_block.{conv}.{end}"] = f"input_hint_block.{2 * index}.{end}"
    for end in ("weight", "bias"):
        key_map[f"controlnet_x_embedder.{end}"] = f"pos_embed_input.{end}"
        for i in range(config.num_layers):
            key_map[f"controlnet_blocks.{i}.{end}"] = f"controlnet_blocks.{i}.{end}"
    return _save(_apply_map(controlnet.state_dict(), key_map), path)


def save_sd35_controlnet_original(controlnet, path, control_type: int = 1) -> Path:
    """An SD3.5 ControlNet (single-stream blocks) in Stability's sd3.5_large_controlnet_*.safetensors names:
    the inverse of diffusers' scripts/convert_sd3_controlnet_to_diffusers.py (fused qkv, MMDiT block names,
    the embedders and controlnet_blocks as they are) plus the `control_type` scalar (1 = canny)."""
    state = controlnet.state_dict()
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "transformer_blocks":
            out[key] = value
            continue
        prefix, inner, end = ".".join(parts[:2]), ".".join(parts[2:-1]), parts[-1]
        if inner in ("attn.to_k", "attn.to_v"):
            continue
        if inner == "attn.to_q":
            qkv = [state[f"{prefix}.attn.to_{p}.{end}"] for p in "qkv"]
            out[f"{prefix}.attn.qkv.{end}"] = torch.cat(qkv, dim=0)
        else:
            out[f"{prefix}.{_SD35_CN_NAMES[inner]}.{end}"] = value
    out["control_type"] = torch.tensor(float(control_type))
    return _save(out, path)
