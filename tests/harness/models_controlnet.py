"""Tiny ControlNets, written the ways real ones are distributed.

`write()` (called by `harness.models.write_concept_models`) puts into
`models/controlnet/`:

* `control_v11p_sd15_canny.safetensors`: SD1, single file, the original LDM
  layout of lllyasviel's releases (`control_model.*`);
* `controlnet-canny-sdxl-1.0.safetensors`: SDXL, single file holding the
  diffusers layout (how diffusers/controlnet-canny-sdxl-1.0 is shared);
* `control_v11p_sd15_lineart/`: SD1, a diffusers folder.

The ControlNets are built from the tiny UNets of `tests/tiny_models.py` with
`ControlNetModel.from_unet`, and their zero-initialised output convolutions
are given random weights (as diffusers' own ControlNet tests do), so they
change the image. The LDM key names come from ComfyUI's UNet map
(`comfy.utils.unet_to_diffusers`) plus the ControlNet-only layers, the way
ComfyUI itself reads diffusers ControlNets, independently of the loader's
diffusers-based converter.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .tests_modules import tests_module


SD15_CANNY = "control_v11p_sd15_canny.safetensors"
SDXL_CANNY = "controlnet-canny-sdxl-1.0.safetensors"
SD15_LINEART_FOLDER = "control_v11p_sd15_lineart"
LDM_PREFIX = "control_model."


def _randomise(controlnet, seed: int, std: float = 0.3):
    """Give the zero-initialised layers random weights, so the ControlNet acts."""
    gen = torch.Generator().manual_seed(seed + 100)
    layers = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for conv in layers:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * std * 0.1)
    return controlnet.eval()


def tiny_controlnet(unet, seed: int = 0):
    """A ControlNet shaped after `unet` (the tiny SD1 or SDXL UNet)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    return _randomise(controlnet, seed)


def tiny_sd1_controlnet(seed: int = 0):
    return tiny_controlnet(tests_module("tiny_models").tiny_sd1_components(seed)["unet"], seed)


def tiny_sdxl_controlnet(seed: int = 0):
    return tiny_controlnet(tests_module("tiny_models").tiny_sdxl_components(seed)["unet"], seed)


def controlnet_to_ldm(controlnet, prefix: str = LDM_PREFIX) -> dict:
    """The ControlNet's weights under LDM names (lllyasviel's layout)."""
    ldm_export = tests_module("ldm_export")
    utils, _ = ldm_export._comfy()
    mapping = utils.unet_to_diffusers(ldm_export._ldm_unet_layout(controlnet.config))
    hint = controlnet.controlnet_cond_embedding
    extra = {}
    for part in ("weight", "bias"):
        extra[f"controlnet_cond_embedding.conv_in.{part}"] = f"input_hint_block.0.{part}"
        for j in range(len(hint.blocks)):
            extra[f"controlnet_cond_embedding.blocks.{j}.{part}"] = f"input_hint_block.{2 * (j + 1)}.{part}"
        extra[f"controlnet_cond_embedding.conv_out.{part}"] = f"input_hint_block.{2 * (len(hint.blocks) + 1)}.{part}"
        for i in range(len(controlnet.controlnet_down_blocks)):
            extra[f"controlnet_down_blocks.{i}.{part}"] = f"zero_convs.{i}.0.{part}"
        extra[f"controlnet_mid_block.{part}"] = f"middle_block_out.0.{part}"
    out = {}
    for key, value in controlnet.state_dict().items():
        name = extra.get(key) or mapping.get(key)
        if name is None:
            raise AssertionError(f"no LDM name for ControlNet key {key}")
        out[prefix + name] = value.detach().contiguous()
    return out


def save_ldm_single_file(controlnet, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(controlnet_to_ldm(controlnet), str(path))
    return path


def save_diffusers_single_file(controlnet, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in controlnet.state_dict().items()}, str(path))
    return path


def write(models_dir: Path, seed: int = 0) -> list[Path]:
    """The tiny ControlNets the shipped workflows name (see the module docstring)."""
    root = Path(models_dir) / "controlnet"
    root.mkdir(parents=True, exist_ok=True)
    sd1 = tiny_sd1_controlnet(seed)
    written = [
        save_ldm_single_file(sd1, root / SD15_CANNY),
        save_diffusers_single_file(tiny_sdxl_controlnet(seed), root / SDXL_CANNY),
    ]
    folder = root / SD15_LINEART_FOLDER
    tiny_sd1_controlnet(seed + 1).save_pretrained(str(folder), safe_serialization=True)
    written.append(folder)
    return written
