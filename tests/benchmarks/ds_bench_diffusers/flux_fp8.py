"""FluxPipeline on the benchmark's fp8 files, with diffusers' own float8 storage (layerwise casting).

Why not the plain calls: `from_pretrained` / `from_single_file` without a
float8 torch_dtype upcast every weight (48 GB for the transformer in
float32), transformers refuses a float8 torch_dtype for T5, and diffusers'
`enable_layerwise_casting` keeps every layer named like a norm in the compute
dtype, which for FLUX.1 includes the adaptive-norm projections (3.2 B
parameters, 13 GB in float32). None of that fits the machines fp8 files are
for. So, with diffusers' public pieces:

* the transformer: `from_single_file(torch_dtype=float8_e4m3fn)` on the BFL
  file, then `apply_layerwise_casting` on every supported layer (no layer
  skipped); the few modules with weights it does not cover (RMSNorm scales)
  are upcast to the compute dtype;
* T5: built on the meta device and assigned the file's float8 tensors
  (one byte per weight, as in the file); each feed-forward casts as one
  group (`apply_layerwise_casting_hook`), since transformers' T5 casts its
  activations to `wo.weight`'s dtype before calling `wo`; the attention
  projections per layer; the token table (0.5 GB in float32: transformers
  reports its dtype as the model's, and FluxPipeline casts the prompt
  embeddings to that), the position bias and layer norms upcast;
* CLIP-L, the VAE, tokenizers and scheduler: `FluxPipeline.from_pretrained`.

Per weight the pack and ComfyUI store the same bytes; the comparison is of
the code around them.
"""
from __future__ import annotations

import os

import torch

FLOAT8 = torch.float8_e4m3fn


def _covered(model: torch.nn.Module) -> set:
    """Names of the modules a layerwise-casting hook casts (the hooked modules and everything under them)."""
    hooked = [name for name, module in model.named_modules()
              if getattr(module, "_diffusers_hook", None) is not None
              and module._diffusers_hook.get_hook("layerwise_casting") is not None]
    return {name for name, _ in model.named_modules()
            if any(name == h or name.startswith(h + ".") for h in hooked)}


def _upcast_uncovered(model: torch.nn.Module, dtype: torch.dtype) -> None:
    covered = _covered(model)
    for name, module in model.named_modules():
        if name in covered:
            continue
        for param in module._parameters.values():
            if param is not None and param.dtype == FLOAT8:
                param.data = param.data.to(dtype)


def load_transformer(path: str, config_dir: str, dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel
    from diffusers.hooks import apply_layerwise_casting

    transformer = FluxTransformer2DModel.from_single_file(path, config=config_dir, torch_dtype=FLOAT8,
                                                          local_files_only=True)
    apply_layerwise_casting(transformer, storage_dtype=FLOAT8, compute_dtype=dtype, skip_modules_pattern=())
    _upcast_uncovered(transformer, dtype)
    return transformer.eval()


def load_t5(folder: str, dtype: torch.dtype):
    from accelerate import init_empty_weights
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.layerwise_casting import apply_layerwise_casting_hook
    from safetensors.torch import load_file
    from transformers import T5Config, T5EncoderModel

    with init_empty_weights():
        t5 = T5EncoderModel(T5Config.from_pretrained(folder))
    state = load_file(os.path.join(folder, "model.safetensors"))
    state["encoder.embed_tokens.weight"] = state["shared.weight"]
    t5.load_state_dict(state, strict=True, assign=True)
    t5.tie_weights()
    for name, module in t5.named_modules():
        if name.endswith("DenseReluDense"):
            apply_layerwise_casting_hook(module, FLOAT8, dtype, non_blocking=False)
    # The token table (`shared`, also reached as `encoder.embed_tokens`) stays out: transformers' `dtype` is
    # the first parameter's, and FluxPipeline casts the prompt embeddings to T5's `dtype`.
    apply_layerwise_casting(t5, storage_dtype=FLOAT8, compute_dtype=dtype,
                            skip_modules_pattern=("DenseReluDense", "^shared$", "embed_tokens"))
    _upcast_uncovered(t5, dtype)
    return t5.eval()


def load_pipeline(path: str, dtype: torch.dtype):
    """FluxPipeline of the benchmark folder `path`, transformer and T5 stored in float8."""
    from diffusers import FluxPipeline

    transformer = load_transformer(os.path.join(path, "transformer", "diffusion_pytorch_model.safetensors"),
                                   os.path.join(path, "transformer"), dtype)
    t5 = load_t5(os.path.join(path, "text_encoder_2"), dtype)
    return FluxPipeline.from_pretrained(path, transformer=transformer, text_encoder_2=t5, torch_dtype=dtype,
                                        local_files_only=True)
