"""Can this machine hold and run a full-size SD3.5 / FLUX.1 side by side? Figures for the decision.

    python tests/benchmarks/dit_feasibility.py count
    python tests/benchmarks/dit_feasibility.py step sd35_medium 256 float32

`count`: parameter counts of the full-size configs the pack ships
(nodes/engine/configs), built on the meta device (no memory, no weights).
`step`: builds that transformer with random weights (seeded normal, std 0.02)
in the given dtype and times two forward passes at batch 2 (a CFG step) on
WIDTHxWIDTH pixels with a 333-token prompt (77 CLIP + 256 T5), printing the
peak resident memory. Not collected by pytest (no test_ prefix): `make bench`
runs the side-by-side benchmarks; this one answers whether a DiT one fits.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "nodes" / "engine" / "configs"


def _config(path: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / path).read_text()).items() if not k.startswith("_")}


def _billions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


def count() -> None:
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"):
        parts = {
            "FLUX.1-dev transformer": FluxTransformer2DModel.from_config(_config("flux_dev/transformer.json")),
            "SD3.5-medium transformer": SD3Transformer2DModel.from_config(_config("sd35_medium/transformer.json")),
            "T5-XXL encoder": T5EncoderModel(T5Config(**_config("sd3/text_encoder_3.json"))),
            "CLIP-L": CLIPTextModelWithProjection(CLIPTextConfig(**_config("sd3/text_encoder.json"))),
            "CLIP-G": CLIPTextModelWithProjection(CLIPTextConfig(**_config("sd3/text_encoder_2.json"))),
            "VAE (16 channels)": AutoencoderKL.from_config(_config("sd3/vae.json")),
        }
    for name, module in parts.items():
        b = _billions(module)
        print(f"{name}: {b:.3f} B parameters, {b * 4:.1f} GB float32, {b * 2:.1f} GB bf16, {b:.1f} GB float8")


def step(model: str, size: int, dtype_name: str) -> None:
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    dtype = getattr(torch, dtype_name)
    cls = FluxTransformer2DModel if model.startswith("flux") else SD3Transformer2DModel
    start = time.monotonic()
    with torch.device("meta"):
        transformer = cls.from_config(_config(f"{model}/transformer.json"))
    transformer = transformer.to_empty(device="cpu").to(dtype).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in transformer.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).to(dtype) * 0.02)
    print(f"built {model} ({_billions(transformer):.3f} B) in {time.monotonic() - start:.1f} s", flush=True)
    if cls is not SD3Transformer2DModel:
        raise SystemExit("step: only SD3 transformers are timed (Flux needs packed latents and ids)")
    side = size // 8
    x = torch.randn(2, 16, side, side, dtype=dtype)
    context = torch.randn(2, 333, 4096, dtype=dtype)
    pooled = torch.randn(2, 2048, dtype=dtype)
    with torch.no_grad():
        for _ in range(2):
            start = time.monotonic()
            transformer(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                        timestep=torch.tensor([500.0, 500.0]))
            print(f"{dtype_name} {size}x{size} forward, batch 2: {time.monotonic() - start:.1f} s", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    if sys.argv[1:2] == ["count"]:
        count()
    elif sys.argv[1:2] == ["step"] and len(sys.argv) == 5:
        step(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit(__doc__)
