"""The full-size SD3.5 IP-Adapter of the benchmark's SD3.5-medium model (`DS_BENCH_EXTRAS=ipa`).

InstantX's published adapter (the one the pack and diffusers read for SD3.5)
is a 4-block time-conditioned resampler, 1280 wide with 20 heads, 64 image
tokens and 320 timestep channels, fed by SigLIP so400m-patch14-384, and one
processor per attention layer of the transformer. Its release is shaped for
SD3.5 Large; this one has the same layout and resampler shaped for the
benchmark's SD3.5-medium transformer (1536 wide, 24 joint blocks + 13
dual-attention layers: 37 processors), so it costs per step what a medium
adapter of that design would. Random weights (seeded), stored as float16,
written beside the model with a marker of their own, so adding it never
rebuilds the 12 GB model.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

ADAPTER = "ds_bench_sd35m_random_ip_adapter.safetensors"
ENCODER = "ds_bench_siglip_so400m_random.safetensors"
DONE = "complete_sd35m_ip.json"
FORMAT = 1

# google/siglip-so400m-patch14-384's vision tower (the pack's single-file reader infers these back).
SIGLIP = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
              image_size=384, patch_size=14, vision_use_head=True)
RESAMPLER = dict(hidden_dim=1280, heads=20, num_queries=64, timestep_in_dim=320)


def is_complete(cache: Path) -> bool:
    import dit_bench_model

    return dit_bench_model.is_complete(cache, DONE, FORMAT)


def _transformer_on_meta(configs_root: Path):
    """The medium transformer (cut as the model is, in a rehearsal) without weights: the adapter needs only
    its config and its attention layers."""
    import torch
    from diffusers import SD3Transformer2DModel

    import dit_bench_model

    with torch.device("meta"):
        return SD3Transformer2DModel.from_config(dit_bench_model.transformer_config(configs_root))


def ensure(cache: Path, configs_root: Path) -> dict:
    """Builds the adapter and the SigLIP encoder into `cache` once; returns the marker's record."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    import dit_bench_model
    from harness import models_ip_adapter as ipa

    cache = Path(cache)
    if is_complete(cache):
        return json.loads((cache / DONE).read_text())
    start = time.perf_counter()
    transformer = _transformer_on_meta(configs_root)
    state = ipa.sd3_adapter_state_dict(transformer, embed=SIGLIP["hidden_size"], seed=5, **RESAMPLER)
    ipa.save_adapter({k: v.to(torch.float16) for k, v in state.items()}, cache / ADAPTER)
    adapter_params = sum(v.numel() for v in state.values())
    del state
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        torch.manual_seed(6)
        encoder = SiglipVisionModel(SiglipVisionConfig(**SIGLIP)).eval()
    finally:
        torch.set_default_dtype(previous)
    ipa.save_siglip_single_file(encoder, cache / ENCODER)
    params = {"ip_adapter": adapter_params, "image_encoder": sum(p.numel() for p in encoder.parameters())}
    return dit_bench_model.write_marker(cache / DONE, FORMAT, int(transformer.config.num_layers), params,
                                        {"build_s": time.perf_counter() - start}, 0)
