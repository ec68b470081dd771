"""SigLIP vision encoders (the SD3.5 IP-Adapter's), told apart from CLIP and read offline.

InstantX's SD3.5-Large IP-Adapter reads the penultimate hidden states of
google/siglip-so400m-patch14-384 (`SiglipVisionModel`), where the h94 and
XLabs adapters read a CLIP vision tower. People keep either in ComfyUI's
`models/clip_vision/`: a transformers folder (the google repository, whose
config.json is a whole SigLIP model with a text tower, or a vision-only
one) or a single `.safetensors` in transformers' key layout (ComfyUI's
`sigclip_vision_patch14_384.safetensors`, or the full `model.safetensors`
with its text tower, whose `text_model.*` keys are dropped here).

A SigLIP state dict differs from CLIP's by what it lacks and has: no class
token (the position table is a square grid), no `pre_layrnorm` and no
`visual_projection`, an attention-pooling `vision_model.head` (optional:
the hidden states do not need it). Its configuration is read from the
tensor shapes; pictures are prepared as `SiglipImageProcessor` does
(a bicubic resize to the square input size, no crop, mean/std 0.5).
"""
from __future__ import annotations

import re

import torch

CLIP = "clip"
SIGLIP = "siglip"

# Heads of the published SigLIP vision towers by width (base, large, so400m);
# other widths (tiny test models) use 64-wide heads where they can.
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1152: 16}
_VISION = "vision_model."


def published_layout(state: dict) -> dict:
    """Keys as the published files have them (`vision_model.*`); transformers 5 saves the tower unprefixed."""
    if "embeddings.patch_embedding.weight" in state and "vision_model.embeddings.patch_embedding.weight" not in state:
        return {_VISION + k: v for k, v in state.items()}
    return state


def is_siglip_state(state: dict) -> bool:
    """A transformers-layout SigLIP vision state dict (no CLS position, no pre-layernorm, no projection)."""
    if "vision_model.embeddings.patch_embedding.weight" not in state:
        return False
    if "visual_projection.weight" in state or "vision_model.pre_layrnorm.weight" in state:
        return False
    if any(k.startswith("vision_model.head.") for k in state):
        return True
    positions = state.get("vision_model.embeddings.position_embedding.weight")
    if positions is None:
        return False
    count = int(positions.shape[0])
    return int(round(count ** 0.5)) ** 2 == count and "vision_model.post_layernorm.weight" in state


def is_siglip_folder_config(config: dict) -> bool:
    """A transformers config.json of a SigLIP model (whole or vision-only)."""
    return str(config.get("model_type", "")) in ("siglip", "siglip_vision_model")


def vision_state(state: dict) -> dict:
    """The vision tower's tensors only (a whole SigLIP file also has text_model.*, logit_scale, logit_bias)."""
    return {k: v for k, v in state.items() if k.startswith(_VISION) and not k.endswith("position_ids")}


def config_from_state_dict(state: dict, name: str):
    """A SiglipVisionConfig read from a transformers-layout state dict's shapes."""
    from transformers import SiglipVisionConfig

    from .image_encoder import ImageEncoderError

    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, _, patch_size, _ = patch.shape
    positions = int(state["vision_model.embeddings.position_embedding.weight"].shape[0])
    grid = int(round(positions ** 0.5))
    pattern = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
    layers = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    fc1 = state.get("vision_model.encoder.layers.0.mlp.fc1.weight")
    if not layers or fc1 is None:
        raise ImageEncoderError(
            f"clip_vision: '{name}' looks like SigLIP but has no encoder layers: the file is incomplete"
        )
    hidden = int(hidden)
    heads = _HEADS_BY_WIDTH.get(hidden) or max(hidden // 64, 1)
    if hidden % heads:
        raise ImageEncoderError(
            f"clip_vision: '{name}' has an unusual width {hidden}; use a transformers folder with its config.json"
        )
    return SiglipVisionConfig(
        hidden_size=hidden,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=heads,
        image_size=grid * int(patch_size),
        patch_size=int(patch_size),
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=any(k.startswith("vision_model.head.") for k in state),
    )


def load_single_file(state: dict, name: str, dtype: torch.dtype):
    """A SiglipVisionModel from a transformers-layout state dict (text tower keys dropped)."""
    from transformers import SiglipVisionModel

    from .image_encoder import assign_state

    state = vision_state(published_layout(state))
    config = config_from_state_dict(state, name)
    with torch.device("meta"):
        model = SiglipVisionModel(config)
    if not any(k.startswith(_VISION) for k in model.state_dict()):  # transformers 5: the tower at the top
        state = {k[len(_VISION):]: v for k, v in state.items()}
    return assign_state(model, state, name, "a SigLIP vision model").to(dtype)


def load_folder(path: str, name: str, dtype: torch.dtype):
    from transformers import SiglipVisionModel

    from .image_encoder import ImageEncoderError

    try:
        return SiglipVisionModel.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ImageEncoderError(f"clip_vision: could not load the SigLIP folder '{name}': {exc}") from exc


def processor(image_size: int):
    """SiglipImageProcessor at the model's input size (what the SD3 pipeline's feature_extractor does)."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": image_size, "width": image_size})
