"""Load a ControlNet (diffusers folder or single weights file) offline.

ControlNets are distributed three ways, and all three load here into a
diffusers `ControlNetModel`, in eval mode and frozen:

* a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`),
  read with `from_pretrained(local_files_only=True)`;
* a single file in the original LDM layout of lllyasviel's releases
  (`control_model.input_blocks...`, `zero_convs`, `input_hint_block`,
  `middle_block_out`; sometimes without the `control_model.` prefix);
* a single file holding the diffusers layout (how most SDXL ControlNets are
  shared: the folder's weights file renamed).

Flux.1 and SD3 / SD3.5 ControlNet files are told apart first and built by
`controlnet_dit_files` (FluxControlNetModel / SD3ControlNetModel).

A single file carries no configuration, so it is read back from the tensor
shapes (levels, widths, layers, transformer depths, context width, hint
encoder widths, SDXL's added embedding), with the facts shapes cannot tell
taken from `families.py` (attention heads, norm groups), exactly as
`single_file.py` does for checkpoints, so real weights and the tiny test
exports take the same path. The family is SDXL when the ControlNet has the
added time/text embedding, SD1.x otherwise.

Safetensors is read first-class; `.pth`/`.bin`/`.ckpt` (the original 1.1
releases are `.pth`) only through `torch.load(weights_only=True)`, which
refuses any file that carries code.
"""
from __future__ import annotations

import logging
import os
import re
import time

import torch

from . import controlnet_dit_files, families
from .components import SD1, SDXL
from .controlnet import ControlNetBundle
from .controlnet_dit_loading import FOLDER_CLASSES as DIT_FOLDER_CLASSES
from .controlnet_dit_loading import folder_class, is_dit_controlnet_folder, load_dit_module
from .families import ModelLoadError
from .loading import CheckpointCache, _fingerprint, resolve_dtype
from .single_file import SAFETENSORS_SUFFIXES, _assign, label
from .weight_files import load_plain_tensors

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
LDM_PREFIX = "control_model."
# The SDXL added embedding's time-id width: 256 in real checkpoints; test-scale
# models follow tiny_models.py / diffusers' dummy components (8).
REAL_ADDITION_TIME_EMBED_DIM = 256
TINY_ADDITION_TIME_EMBED_DIM = 8

controlnet_cache = CheckpointCache()


# ------------------------------------------------------------------ reading


def _read_state_dict(path: str) -> dict:
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises its own error type
            raise ModelLoadError(
                f"ControlNet {label(path)!r} could not be read as safetensors ({exc}). The file is "
                "corrupt or truncated: download it again."
            ) from exc
    if suffix in PICKLE_SUFFIXES:
        data = load_plain_tensors(path, f"ControlNet {label(path)!r}", ModelLoadError)
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise ModelLoadError(f"ControlNet {label(path)!r} does not hold a dictionary of weights.")
        return data
    raise ModelLoadError(
        f"ControlNet {label(path)!r} has an unsupported suffix {suffix or 'none'!r}: select a "
        ".safetensors file or a diffusers ControlNet folder (config.json + weights)."
    )


def _indices(keys, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def _layout(state: dict, name: str) -> str:
    """"ldm" or "diffusers"; anything else is refused with what it looks like."""
    keys = state.keys()
    if "controlnet_cond_embedding.conv_in.weight" in state:
        return "diffusers"
    if any(k.startswith(LDM_PREFIX + "input_hint_block.") for k in keys) or "input_hint_block.0.weight" in state:
        return "ldm"
    if any("lora_controlnet" in k or k.endswith(".up") for k in keys):
        what = "a Control-LoRA"
    elif any(k.startswith("adapter.") or k.startswith("body.") for k in keys):
        what = "a T2I-Adapter"
    elif any("control_add_embedding" in k or "task_embedding" in k for k in keys):
        what = "a ControlNet-Union model"
    elif any(k.startswith("model.diffusion_model.") for k in keys):
        what = "a full Stable Diffusion checkpoint"
    else:
        what = "not a ControlNet"
    raise ModelLoadError(
        f"ControlNet {name!r} is {what}; Diffusers Studio loads SD1.x and SDXL ControlNets "
        "(lllyasviel's control_v11* files, diffusers ControlNetModel weights), Flux.1 ControlNets in "
        "diffusers format (InstantX, Union, XLabs -diffusers), XLabs' own Flux files and SD3 / SD3.5 ControlNets (InstantX, "
        "Stability's sd3.5_large_controlnet_*) as single files, or any of them as a diffusers folder. "
        "Put checkpoints in models/checkpoints and select a ControlNet here."
    )


# ------------------------------------------------------- LDM -> diffusers


def _ldm_to_diffusers(ldm: dict, name: str) -> dict:
    """Convert LDM ControlNet keys (prefix removed) to diffusers keys.

    The UNet-like encoder is converted by diffusers' own converter; the hint
    encoder and SDXL's label embedding are converted here, because diffusers'
    converter assumes the full-size hint encoder (conv_out at index 14) and
    skips the added embedding.
    """
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    hint = {k: v for k, v in ldm.items() if k.startswith("input_hint_block.")}
    label_emb = {k: v for k, v in ldm.items() if k.startswith("label_emb.")}
    rest = {k: v for k, v in ldm.items() if k not in hint and k not in label_emb}

    blocks = _indices(rest, "input_blocks.")
    downsamplers = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in rest]
    levels = len(downsamplers) + 1
    layers, remainder = divmod(len(blocks) - 1 - len(downsamplers), levels)
    if not blocks or remainder or layers < 1:
        raise ModelLoadError(
            f"ControlNet {name!r}: its input blocks ({len(blocks)}) do not form a standard SD1.x/SDXL "
            "encoder; the file is damaged or an unsupported variant."
        )
    state = convert_controlnet_checkpoint(rest, {"layers_per_block": layers})
    state = {k: v for k, v in state.items() if v is not None}

    convs = _indices(hint, "input_hint_block.")
    if len(convs) < 2:
        raise ModelLoadError(f"ControlNet {name!r}: its hint encoder (input_hint_block) is incomplete.")
    for part in ("weight", "bias"):
        state[f"controlnet_cond_embedding.conv_in.{part}"] = hint[f"input_hint_block.{convs[0]}.{part}"]
        state[f"controlnet_cond_embedding.conv_out.{part}"] = hint[f"input_hint_block.{convs[-1]}.{part}"]
        for j, index in enumerate(convs[1:-1]):
            state[f"controlnet_cond_embedding.blocks.{j}.{part}"] = hint[f"input_hint_block.{index}.{part}"]
        for src, dst in (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")):
            if f"{src}.{part}" in label_emb:
                state[f"{dst}.{part}"] = label_emb[f"{src}.{part}"]
    return state


# ------------------------------------------------------------ inference


def _get(state: dict, key: str, name: str) -> torch.Tensor:
    try:
        return state[key]
    except KeyError:
        raise ModelLoadError(
            f"ControlNet {name!r}: its weights are incomplete (no {key!r}). The file is damaged or not "
            "a standard SD1.x/SDXL ControlNet."
        ) from None


def infer_config(state: dict, name: str, *, global_pool: bool = False) -> tuple[str, dict]:
    """(family, ControlNetModel config) from diffusers-layout weights."""
    keys = list(state)
    conv_in = _get(state, "conv_in.weight", name)
    levels = _indices(keys, "down_blocks.")
    if not levels:
        _get(state, "down_blocks.0.resnets.0.conv2.weight", name)
    channels = [int(_get(state, f"down_blocks.{b}.resnets.0.conv2.weight", name).shape[0]) for b in levels]
    layers = len(_indices(keys, "down_blocks.0.resnets."))
    depths = [len(_indices(keys, f"down_blocks.{b}.attentions.0.transformer_blocks.")) for b in levels]
    mid_depth = len(_indices(keys, "mid_block.attentions.0.transformer_blocks."))
    attn2 = [k for k in keys if k.endswith("attn2.to_k.weight")]
    proj_in = [k for k in keys if k.endswith(".proj_in.weight")]
    if not attn2 or not proj_in:
        raise ModelLoadError(
            f"ControlNet {name!r} has no cross-attention layers; it is not an SD1.x/SDXL ControlNet."
        )
    cross_dim = int(state[attn2[0]].shape[1])
    if "class_embedding.linear_1.weight" in state:
        raise ModelLoadError(
            f"ControlNet {name!r} takes a class embedding (an unCLIP variant), which is not supported."
        )
    family = SDXL if "add_embedding.linear_1.weight" in state else SD1
    real = channels[0] >= families.REAL_UNET_MIN_WIDTH
    if real and family == SD1 and cross_dim != 768:
        raise ModelLoadError(
            f"ControlNet {name!r} expects {cross_dim}-wide text embeddings: it is a Stable Diffusion "
            f"{'2.x' if cross_dim == 1024 else 'variant'} ControlNet; Diffusers Studio supports SD1.x "
            "(768) and SDXL ControlNets."
        )

    hint_blocks = _indices(keys, "controlnet_cond_embedding.blocks.")
    hint_in = _get(state, "controlnet_cond_embedding.conv_in.weight", name)
    hint_channels = [int(hint_in.shape[0])] + [
        int(state[f"controlnet_cond_embedding.blocks.{j}.weight"].shape[0]) for j in hint_blocks[1::2]
    ]

    per_level = [d if d else 1 for d in depths]
    if not depths[-1]:
        per_level[-1] = max(mid_depth, 1)
    config = {
        "in_channels": int(conv_in.shape[1]),
        "conditioning_channels": int(hint_in.shape[1]),
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": cross_dim,
        "transformer_layers_per_block": per_level if any(n != 1 for n in per_level) else 1,
        "use_linear_projection": state[proj_in[0]].ndim == 2,
        "conditioning_embedding_out_channels": hint_channels,
        "global_pool_conditions": bool(global_pool),
        "upcast_attention": False,
    }
    facts = families.unet_facts(family, channels)
    config["attention_head_dim"] = facts["attention_head_dim"]
    config["norm_num_groups"] = facts.get("norm_num_groups", 32)
    if family == SDXL:
        adm = int(state["add_embedding.linear_1.weight"].shape[1])
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=REAL_ADDITION_TIME_EMBED_DIM if real else TINY_ADDITION_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=adm,
        )
    return family, config


def _family_of_config(config) -> str:
    return SDXL if getattr(config, "addition_embed_type", None) == "text_time" else SD1


def _is_shuffle(path: str) -> bool:
    """lllyasviel's shuffle ControlNet pools its residuals; only its name says so (as in ComfyUI)."""
    stem = os.path.splitext(label(path))[0].lower()
    return stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")


# ------------------------------------------------------------------ entry


def is_controlnet_folder(path: str) -> bool:
    """A diffusers ControlNet folder: config.json naming ControlNetModel (or a Flux / SD3 one)."""
    return folder_class(path) in ("ControlNetModel", *DIT_FOLDER_CLASSES)


def load_controlnet(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "auto",
    device: torch.device | str = "cpu",
    use_cache: bool = True,
) -> ControlNetBundle:
    """Load the ControlNet at `path` (folder or single file) as a DS_CONTROLNET value."""
    from diffusers import ControlNetModel

    path = os.fspath(path)
    device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, device)
    name = label(path)
    if not os.path.exists(path):
        raise ModelLoadError(
            f"ControlNet {name!r} was not found: put it in models/controlnet and refresh the list."
        )
    key = None
    if use_cache:
        from .loading import CacheKey

        key = CacheKey(os.path.realpath(path), _fingerprint(path), str(torch_dtype), str(device), "")
        cached = controlnet_cache.get(key)
        if cached is not None:
            return cached[0]

    started = time.perf_counter()
    affine = controlnet_dit_files.SIGNED_HINT  # how the hint enters the VAE; SD3.5 canny files differ
    if os.path.isdir(path):
        if not is_controlnet_folder(path):
            raise ModelLoadError(
                f"Folder {name!r} is not a diffusers ControlNet folder (its config.json does not name "
                "ControlNetModel, FluxControlNetModel or SD3ControlNetModel). Select a ControlNetModel folder or a single ControlNet file."
            )
        if is_dit_controlnet_folder(path):
            family, module = load_dit_module(path, name, torch_dtype)
        else:
            try:
                module = ControlNetModel.from_pretrained(path, local_files_only=True, torch_dtype=torch_dtype)
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise ModelLoadError(
                    f"ControlNet folder {name!r} could not be loaded ({exc}). Its files are missing or damaged."
                ) from exc
            family = _family_of_config(module.config)
    else:
        state = _read_state_dict(path)
        kind = controlnet_dit_files.kind_of(state, name)
        if kind is not None:  # a Flux / SD3 ControlNet file
            affine = controlnet_dit_files.hint_affine(state, kind)
            state = {k: (v.to(torch_dtype) if v.is_floating_point() else v) for k, v in state.items()}
            family, module = controlnet_dit_files.load_file(state, kind, name)
        elif _layout(state, name) == "ldm":
            if any(k.startswith(LDM_PREFIX) for k in state):
                state = {k[len(LDM_PREFIX):]: v for k, v in state.items() if k.startswith(LDM_PREFIX)}
            state = _ldm_to_diffusers(state, name)
        if kind is None:
            state = {k: (v.to(torch_dtype) if v.is_floating_point() else v) for k, v in state.items()}
            family, config = infer_config(state, name, global_pool=_is_shuffle(path))
            module = _assign(lambda: ControlNetModel(**config), state, "ControlNet", name)
        del state
    module.to(device)
    module.eval()
    module.requires_grad_(False)
    bundle = ControlNetBundle(family=family, name=name, module=module, dtype=torch_dtype, hint_affine=affine)
    logger.info("Loaded %s ControlNet %s (%s) in %.1f s", family, name, torch_dtype, time.perf_counter() - started)
    if key is not None:
        controlnet_cache.put(key, (bundle,))
    return bundle
