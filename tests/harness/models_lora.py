"""A tiny LoRA for the tiny SD1 demo model, in the kohya/A1111 format most LoRAs use.

`write()` (called by `harness.models.write_concept_models`) puts
`models/loras/example_lora_sd15.safetensors`: kohya keys (`lora_unet_*` with
the diffusers module path, as kohya names SD1.x layers; `lora_te_*` for CLIP),
one alpha per layer, LoCon-style layers on a few 3x3 convolutions. It fits
the tiny SD1 model of `tests/tiny_models.py` (any seed: only shapes matter),
so `example_workflows/txt2img_lora.json` runs with the demo models.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .tests_modules import tests_module

SD15_LORA = "example_lora_sd15.safetensors"
UNET_LAYERS = ("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_out.0", "ff.net.2", "proj_out", "resnets.0.conv1")
TEXT_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def kohya_lora(unet, text_encoder, seed: int, rank: int = 4, alpha: float = 2.0, magnitude: float = 0.2) -> dict:
    """kohya/A1111 LoRA tensors for these modules (random, fixed by `seed`)."""
    gen = torch.Generator().manual_seed(seed + 600)
    out: dict = {}

    def add(key: str, weight: torch.Tensor) -> None:
        if weight.ndim == 4:  # LoCon: kxk down, 1x1 up
            down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=gen) * magnitude
            up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen) * magnitude
        else:
            down = torch.randn(rank, weight.shape[1], generator=gen) * magnitude
            up = torch.randn(weight.shape[0], rank, generator=gen) * magnitude
        out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = down, up
        out[f"{key}.alpha"] = torch.tensor(float(alpha))

    for name, module in unet.named_modules():
        if name.endswith(UNET_LAYERS):
            add("lora_unet_" + name.replace(".", "_"), module.weight)
    for name, module in text_encoder.named_modules():
        if name.endswith(TEXT_LAYERS):
            add("lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_"), module.weight)
    return out


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    from safetensors.torch import save_file

    tiny_models = tests_module("tiny_models")
    components = tiny_models.tiny_sd1_components(seed)
    folder = Path(models_dir) / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SD15_LORA
    tensors = kohya_lora(components["unet"], components["text_encoder"], seed)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"ss_network_module": "networks.lora"})
    return [path]
