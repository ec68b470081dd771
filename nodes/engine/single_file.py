"""Single-file checkpoints (.safetensors, original LDM / A1111 key layout).

Such a file holds the UNet (`model.diffusion_model.*`), the VAE
(`first_stage_model.*`) and the text encoder(s) of one model, but no
configuration. The loader therefore:

1. reads only the safetensors header (names and shapes, no tensor data) to
   tell what the file is and refuse anything that is not an SD1.x, SDXL base
   or SDXL refiner checkpoint with a message saying what it looks like;
2. infers every dimension it can from the tensor shapes (channels, levels,
   layers, transformer depths, context and embedding sizes, text-tower sizes)
   on top of the bundled full-size family config, and takes the facts shapes
   cannot tell from `families.py`. Real weights and the tiny test exports go
   through this same path;
3. converts the keys with diffusers' own converters
   (`diffusers.loaders.single_file_utils`) and assigns the tensors to modules
   built on the meta device, so no random initialisation is paid for.

Nothing here touches a hub, and nothing is unpickled: non-safetensors files
are refused before they are opened.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Iterable

import torch

from . import families
from .components import BASE, REFINER, SD1, SDXL
from .families import ModelLoadError

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
# The SDXL refiner's only text encoder (OpenCLIP bigG) is its embedder 0.
REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."

# Keys the converted text encoders may carry that the modules do not hold.
_IGNORED_TEXT_KEYS = ("text_model.embeddings.position_ids", "logit_scale")


def label(path: str | os.PathLike) -> str:
    """How messages name a checkpoint: its file or folder name."""
    return os.path.basename(os.fspath(path).rstrip("/\\")) or os.fspath(path)


@dataclass
class Header:
    """A safetensors file's tensor names and shapes, read without the data."""

    path: str
    shapes: dict
    metadata: dict = field(default_factory=dict)

    def with_prefix(self, prefix: str) -> dict:
        """Shapes of the keys under `prefix`, with the prefix removed."""
        n = len(prefix)
        return {k[n:]: v for k, v in self.shapes.items() if k.startswith(prefix)}

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.shapes)


@dataclass
class SingleFileModels:
    """What a single-file checkpoint holds, as diffusers/transformers modules."""

    family: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: tuple
    variant: str = BASE


# ------------------------------------------------------------------- header


def check_suffix(path: str) -> None:
    """Refuse files that are not safetensors before anything opens them."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return
    if suffix in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"Checkpoint {label(path)!r} is a pickle-based {suffix} file. Diffusers Studio does not "
            "open pickle checkpoints because unpickling can run arbitrary code. Convert it to "
            ".safetensors (for example with a trusted converter such as ComfyUI's CheckpointSave "
            "node, or diffusers' conversion scripts) and select the .safetensors file."
        )
    raise ModelLoadError(
        f"Checkpoint {label(path)!r} is not a .safetensors file (suffix {suffix or 'none'!r}). "
        "Select a .safetensors checkpoint or a diffusers folder. " + families.SUPPORTED_SUMMARY
    )


def read_header(path: str) -> Header:
    """Names and shapes of every tensor in `path`, without reading tensor data."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
            metadata = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error type for bad headers
        raise ModelLoadError(
            f"Checkpoint {label(path)!r} could not be read as safetensors ({exc}). The file is "
            "corrupt, truncated or not a safetensors file despite its name: download or convert it "
            "again."
        ) from exc
    return Header(path=path, shapes=shapes, metadata=metadata)


# --------------------------------------------------------------- detection


def _sample_keys(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def _looks_like(header: Header) -> str | None:
    """A description of a known non-SD1/SDXL file, or None."""
    keys = list(header.shapes)
    has = lambda part: any(part in k for k in keys)  # noqa: E731
    starts = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731

    if starts("controlnet_blocks.") or starts("controlnet_x_embedder.") or starts("pos_embed_input."):
        return (
            "a Flux / SD3 ControlNet, not a checkpoint (put it in models/controlnet and load it with "
            "Load Diffusers ControlNet)"
        )
    if has("double_blocks.") or has("single_blocks.") or has("single_transformer_blocks."):
        return "a Flux-style transformer model"
    if has("joint_blocks.") or starts("text_encoders.clip_g."):
        return "a Stable Diffusion 3 (MMDiT) model"
    if starts(UNET_PREFIX) and not starts(UNET_PREFIX + "input_blocks."):
        return "a transformer (DiT) diffusion model of another family"
    if starts("cond_stage_model.model."):
        return "a Stable Diffusion 2.x checkpoint (OpenCLIP-H text encoder)"
    if starts(UNET_PREFIX):
        return None
    if has("lora_") or has(".lora_down.") or has(".lora_up.") or has(".lora_A.") or has(".lora_B.") or has("hada_"):
        return "a LoRA / LyCORIS adapter, not a checkpoint (load it with the LoRA node)"
    if starts("control_model.") or has("input_hint_block.") or has("controlnet_cond_embedding."):
        return "a ControlNet model, not a checkpoint (load it with the ControlNet node)"
    if has("string_to_param") or has("emb_params") or set(keys) <= {"clip_l", "clip_g"}:
        return "a textual-inversion embedding, not a checkpoint"
    if (starts("encoder.") and starts("decoder.")) or starts(VAE_PREFIX):
        return "a standalone VAE, not a full checkpoint (load it with the VAE loader)"
    if starts("down_blocks.") or starts("time_embedding.") or starts("conv_in."):
        return (
            "a diffusers-format component (UNet or adapter weights), not a full checkpoint; "
            "load the whole diffusers folder instead"
        )
    if starts("text_model.") or starts("cond_stage_model.") or starts("conditioner."):
        return "text-encoder weights only, not a full checkpoint"
    return f"not a Stable Diffusion checkpoint (keys such as {_sample_keys(keys)})"


def _is_refiner_layout(header: Header) -> bool:
    """The SDXL refiner's layout: OpenCLIP bigG as embedder 0, no second embedder."""
    return header.has_prefix(REFINER_CLIP_G_PREFIX) and not header.has_prefix("conditioner.embedders.1.")


def detect_model(header: Header) -> tuple[str, str]:
    """(family, variant) from the key layout: (SD1, BASE), (SDXL, BASE) or
    (SDXL, REFINER); ModelLoadError for anything else."""
    name = label(header.path)
    if not header.shapes:
        raise ModelLoadError(f"Checkpoint {name!r} holds no tensors. " + families.SUPPORTED_SUMMARY)
    what = _looks_like(header)
    if what is not None:
        raise ModelLoadError(
            f"Checkpoint {name!r} looks like {what}. It cannot be loaded as a model. "
            + families.SUPPORTED_SUMMARY
        )
    variant = BASE
    if _is_refiner_layout(header):
        family, variant = SDXL, REFINER
        required = {
            "UNet (model.diffusion_model.*)": UNET_PREFIX,
            "VAE (first_stage_model.*)": VAE_PREFIX,
            "OpenCLIP bigG text encoder (conditioner.embedders.0.model.*)": REFINER_CLIP_G_PREFIX,
        }
        if (UNET_PREFIX + "input_blocks.0.0.weight") in header.shapes and (
            UNET_PREFIX + "label_emb.0.0.weight"
        ) not in header.shapes:
            raise ModelLoadError(
                f"Checkpoint {name!r} has the SDXL refiner's text encoder (OpenCLIP bigG alone) but its UNet "
                "takes no added size/aesthetic embedding (no label_emb), so it is neither an SDXL refiner nor "
                "an SDXL base checkpoint. " + families.SUPPORTED_SUMMARY
            )
    elif header.has_prefix("conditioner.embedders.1.") or (UNET_PREFIX + "label_emb.0.0.weight") in header.shapes:
        family = SDXL
        required = {
            "UNet (model.diffusion_model.*)": UNET_PREFIX,
            "VAE (first_stage_model.*)": VAE_PREFIX,
            "CLIP-L text encoder (conditioner.embedders.0.transformer.*)": SDXL_CLIP_L_PREFIX,
            "OpenCLIP bigG text encoder (conditioner.embedders.1.model.*)": SDXL_CLIP_G_PREFIX,
        }
    else:
        family = SD1
        required = {
            "UNet (model.diffusion_model.*)": UNET_PREFIX,
            "VAE (first_stage_model.*)": VAE_PREFIX,
            "CLIP text encoder (cond_stage_model.transformer.*)": SD1_CLIP_PREFIX,
        }
    missing = [what for what, prefix in required.items() if not header.has_prefix(prefix)]
    if missing:
        raise ModelLoadError(
            f"Checkpoint {name!r} looks like a {families.label_of(family, variant)} file but has no "
            f"{' and no '.join(missing)} weights. Diffusers Studio needs a full checkpoint "
            "(UNet, VAE and text encoders in one file): select a full checkpoint or a diffusers folder."
        )
    return family, variant


def detect_family(header: Header) -> str:
    """SD1 or SDXL (the refiner included), from the key layout; see `detect_model`."""
    return detect_model(header)[0]


# ---------------------------------------------------------------- inference


def _indices(shapes: dict, prefix: str) -> list[int]:
    """Sorted distinct integers N of keys `prefix + "N." ...`."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
    return sorted(found)


def _shape(shapes: dict, key: str, what: str, name: str) -> tuple:
    try:
        return shapes[key]
    except KeyError:
        raise ModelLoadError(
            f"Checkpoint {name!r}: the {what} weights are incomplete (no {key!r}). The file is damaged "
            "or not a standard SD1.x/SDXL checkpoint."
        ) from None


def infer_unet_config(
    shapes: dict, family: str, name: str, pooled_dim: int | None = None, variant: str = BASE
) -> dict:
    """A diffusers UNet2DConditionModel config from LDM UNet shapes (prefix removed).

    pooled_dim: the SDXL (last) text encoder's projection size, needed to split
    the addition embedding's input into time ids and pooled text.
    variant: REFINER for the SDXL refiner (5 time ids instead of 6).
    """
    conv_in = _shape(shapes, "input_blocks.0.0.weight", "UNet", name)
    in_channels, model_channels = int(conv_in[1]), int(conv_in[0])
    out_channels = int(_shape(shapes, "out.2.weight", "UNet", name)[0])

    levels: list[dict] = [{"channels": [], "depths": []}]
    for i in _indices(shapes, "input_blocks.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append({"channels": [], "depths": []})
            continue
        out = _shape(shapes, f"input_blocks.{i}.0.out_layers.3.weight", "UNet", name)
        levels[-1]["channels"].append(int(out[0]))
        levels[-1]["depths"].append(len(_indices(shapes, f"input_blocks.{i}.1.transformer_blocks.")))

    layer_counts = {len(level["channels"]) for level in levels}
    if len(layer_counts) != 1 or 0 in layer_counts:
        raise ModelLoadError(
            f"Checkpoint {name!r}: its UNet has an uneven number of res-blocks per level "
            f"({[len(level['channels']) for level in levels]}); only the standard SD1.x/SDXL layout is supported."
        )
    block_out_channels, depths = [], []
    for level in levels:
        if len(set(level["channels"])) != 1 or len(set(level["depths"])) != 1:
            raise ModelLoadError(
                f"Checkpoint {name!r}: its UNet levels mix widths or transformer depths; only the "
                "standard SD1.x/SDXL layout is supported."
            )
        block_out_channels.append(level["channels"][0])
        depths.append(level["depths"][0])

    mid_depth = len(_indices(shapes, "middle_block.1.transformer_blocks."))
    if mid_depth == 0:
        raise ModelLoadError(
            f"Checkpoint {name!r}: its UNet middle block has no cross-attention; only the standard "
            "SD1.x/SDXL layout is supported."
        )
    if depths[-1] and depths[-1] != mid_depth:
        raise ModelLoadError(
            f"Checkpoint {name!r}: its UNet middle block depth ({mid_depth}) differs from the last "
            f"level's ({depths[-1]}); only the standard SD1.x/SDXL layout is supported."
        )
    layers = [d if d else 1 for d in depths]
    if not depths[-1]:
        layers[-1] = mid_depth
    transformer_layers = layers if any(n != 1 for n in layers) else 1
    attention_depths = {d for d in depths if d} | {mid_depth}
    if variant == REFINER and len(attention_depths) == 1:
        # The refiner's published config says one depth for every level (4);
        # the levels without attention ignore it, so the modules are the same.
        transformer_layers = attention_depths.pop()

    attn_keys = [k for k in shapes if k.endswith("transformer_blocks.0.attn2.to_k.weight")]
    proj_in = [k for k in shapes if k.endswith(".proj_in.weight")]
    cross_attention_dim = int(shapes[attn_keys[0]][1])

    config = families.bundled_config(family, "unet", variant)
    config.update(
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=block_out_channels,
        layers_per_block=layer_counts.pop(),
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=len(shapes[proj_in[0]]) == 2,
        transformer_layers_per_block=transformer_layers,
    )
    time_embed = _shape(shapes, "time_embed.0.weight", "UNet", name)
    if int(time_embed[0]) != 4 * model_channels:
        config["time_embedding_dim"] = int(time_embed[0])

    if "label_emb.0.0.weight" in shapes:
        if family != SDXL or pooled_dim is None:
            raise ModelLoadError(
                f"Checkpoint {name!r}: its UNet takes a class/image embedding (label_emb) that "
                f"{families.FAMILY_LABELS[family]} does not have; this variant is not supported."
            )
        adm = int(shapes["label_emb.0.0.weight"][1])
        time_ids = adm - pooled_dim
        # SDXL base: original size, crop top-left, target size (6 ids);
        # the refiner: original size, crop top-left, aesthetic score (5).
        count = 5 if variant == REFINER else 6
        if time_ids <= 0 or time_ids % count:
            raise ModelLoadError(
                f"Checkpoint {name!r}: its UNet's added-embedding input ({adm}) does not match {count} time "
                f"ids plus the {pooled_dim}-wide pooled text embedding of its OpenCLIP bigG text encoder, "
                f"as a {families.label_of(family, variant)} UNet takes. The file mixes parts of different "
                "models or is a variant Diffusers Studio does not support."
            )
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=time_ids // count,
            projection_class_embeddings_input_dim=adm,
        )
    elif family == SDXL:
        raise ModelLoadError(
            f"Checkpoint {name!r} looks like SDXL but its UNet has no added time embedding (label_emb)."
        )
    config.update(families.unet_facts(family, block_out_channels))
    return config


def infer_vae_config(shapes: dict, family: str, name: str) -> dict:
    """A diffusers AutoencoderKL config from LDM VAE shapes (prefix removed)."""
    config = families.bundled_config(family, "vae")
    config.update(vae_shape_fields(shapes, name))
    config.update(families.vae_facts(family, config["block_out_channels"]))
    return config


def vae_shape_fields(shapes: dict, name: str) -> dict:
    """The AutoencoderKL config entries LDM VAE shapes (prefix removed) tell.

    Shared with the Flux/SD3 loader, whose autoencoders have the same layout.
    """
    conv_in = _shape(shapes, "encoder.conv_in.weight", "VAE", name)
    levels = _indices(shapes, "encoder.down.")
    if not levels:
        _shape(shapes, "encoder.down.0.block.0.conv1.weight", "VAE", name)
    block_out_channels = [
        int(_shape(shapes, f"encoder.down.{i}.block.0.conv1.weight", "VAE", name)[0]) for i in levels
    ]
    return dict(
        in_channels=int(conv_in[1]),
        out_channels=int(_shape(shapes, "decoder.conv_out.weight", "VAE", name)[0]),
        latent_channels=int(_shape(shapes, "decoder.conv_in.weight", "VAE", name)[1]),
        block_out_channels=block_out_channels,
        layers_per_block=len(_indices(shapes, "encoder.down.0.block.")),
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in shapes,
    )


def _text_config(family: str, component: str, *, hidden, vocab, positions, layers, intermediate, projection):
    config = families.bundled_config(family, component)
    config.update(
        hidden_size=hidden,
        vocab_size=vocab,
        max_position_embeddings=positions,
        num_hidden_layers=layers,
        intermediate_size=intermediate,
        projection_dim=projection,
    )
    config.update(families.text_facts(hidden))
    return config


def infer_clip_config(shapes: dict, family: str, name: str) -> dict:
    """A CLIPTextConfig dict from HF-layout CLIP-L shapes (prefix removed)."""
    return _text_config(family, "text_encoder", **clip_shape_fields(shapes, name))


def clip_shape_fields(shapes: dict, name: str) -> dict:
    """The `_text_config` sizes HF-layout CLIP shapes (`text_model.*`, prefix removed) tell.

    Shared with the Flux/SD3 loader, whose CLIP towers have the same layout.
    """
    token = _shape(shapes, "text_model.embeddings.token_embedding.weight", "CLIP text encoder", name)
    hidden = int(token[1])
    projection = shapes.get("text_projection.weight", (hidden,))[0]
    return dict(
        hidden=hidden,
        vocab=int(token[0]),
        positions=int(_shape(shapes, "text_model.embeddings.position_embedding.weight", "CLIP", name)[0]),
        layers=len(_indices(shapes, "text_model.encoder.layers.")),
        intermediate=int(_shape(shapes, "text_model.encoder.layers.0.mlp.fc1.weight", "CLIP", name)[0]),
        projection=int(projection),
    )


def infer_open_clip_config(shapes: dict, family: str, name: str) -> dict:
    """A CLIPTextConfig dict from OpenCLIP-layout shapes (prefix removed)."""
    what = "OpenCLIP text encoder"
    token = _shape(shapes, "token_embedding.weight", what, name)
    return _text_config(
        family,
        "text_encoder_2",
        hidden=int(token[1]),
        vocab=int(token[0]),
        positions=int(_shape(shapes, "positional_embedding", what, name)[0]),
        layers=len(_indices(shapes, "transformer.resblocks.")),
        intermediate=int(_shape(shapes, "transformer.resblocks.0.mlp.c_fc.weight", what, name)[0]),
        projection=int(_shape(shapes, "text_projection", what, name)[1]),
    )


# ------------------------------------------------------------------ loading


_KEYS_PER_OPENING = 64


def _load_tensors(path: str, prefix: str, dtype: torch.dtype) -> dict:
    """The tensors under `prefix` (prefix kept), floating ones cast to `dtype`.

    The file is memory-mapped, and the pages read stay in the process's
    resident memory until the mapping closes. Reading the keys in small
    groups, each through its own opening, keeps that to one group's pages
    instead of the whole component's: without it a float32 load of a float16
    file peaked at the converted weights plus the UNet's file pages (1.3 GiB
    more for SD1.5).
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as fh:
        keys = [key for key in fh.keys() if key.startswith(prefix)]
    out = {}
    for start in range(0, len(keys), _KEYS_PER_OPENING):
        with safe_open(path, framework="pt", device="cpu") as fh:
            for key in keys[start:start + _KEYS_PER_OPENING]:
                tensor = fh.get_tensor(key)
                out[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


def _assign(
    factory: Callable[[], torch.nn.Module],
    state_dict: dict,
    what: str,
    name: str,
    adapt_keys: Callable[[dict, torch.nn.Module], dict] | None = None,
) -> torch.nn.Module:
    """Build a module without initialising weights and assign `state_dict` to it."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = factory()
    if adapt_keys is not None:
        state_dict = adapt_keys(state_dict, module)
    try:
        module.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        detail = str(exc).split("\n")
        raise ModelLoadError(
            f"Checkpoint {name!r}: the {what} weights do not fit the architecture inferred from the "
            f"file ({' '.join(line.strip() for line in detail[:4])[:600]}). The file is damaged or a "
            "variant Diffusers Studio does not support."
        ) from exc
    return module


def _canonical_text_key(key: str) -> str:
    """CLIP keys in the usual HF layout, `text_model.` included.

    Some old checkpoints were saved without the `text_model.` level.
    """
    return key if key.startswith(("text_model.", "text_projection.", "logit_scale")) else "text_model." + key


def _clip_state_dict(checkpoint: dict) -> dict:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    # Both SD1 and SDXL CLIP-L prefixes are among the ones diffusers strips.
    converted = convert_ldm_clip_checkpoint(checkpoint)
    fixed = {_canonical_text_key(k): v for k, v in converted.items()}
    return {k: v for k, v in fixed.items() if k not in _IGNORED_TEXT_KEYS}


def _normalise_clip_shapes(shapes: dict) -> dict:
    return {_canonical_text_key(k): v for k, v in shapes.items()}


def fit_text_keys(state_dict: dict, module: torch.nn.Module) -> dict:
    """Match canonical `text_model.*` keys to the module's own layout.

    transformers 5 dropped the `text_model.` level from CLIPTextModel (its
    from_pretrained renames on the fly); transformers 4 and
    CLIPTextModelWithProjection keep it.
    """
    expected = set(module.state_dict().keys())
    out = {}
    for key, value in state_dict.items():
        if key not in expected and key.startswith("text_model.") and key[len("text_model."):] in expected:
            key = key[len("text_model."):]
        out[key] = value
    return out


def _load_open_clip(path: str, header: Header, prefix: str, family: str, name: str, dtype: torch.dtype):
    """SDXL's OpenCLIP bigG encoder under `prefix`, as a CLIPTextModelWithProjection."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    g_config = CLIPTextConfig(**infer_open_clip_config(header.with_prefix(prefix), family, name))
    shim = SimpleNamespace(config=SimpleNamespace(hidden_size=g_config.hidden_size))
    checkpoint = _load_tensors(path, prefix, dtype)
    state = convert_open_clip_checkpoint(shim, checkpoint, prefix=prefix)
    del checkpoint
    state = {k: v for k, v in state.items() if k not in _IGNORED_TEXT_KEYS}
    return _assign(
        lambda: CLIPTextModelWithProjection(g_config),
        state,
        "OpenCLIP text encoder",
        name,
        adapt_keys=fit_text_keys,
    )


def load_single_file(path: str, *, dtype: torch.dtype, device: torch.device | str = "cpu") -> SingleFileModels:
    """Load an SD1.x / SDXL / SDXL refiner single-file checkpoint as diffusers modules (eval, frozen)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    check_suffix(path)
    header = read_header(path)
    family, variant = detect_model(header)
    name = label(path)
    logger.info("Loading %s%s single-file checkpoint %s", family, " refiner" if variant == REFINER else "", name)

    # Text encoders first: SDXL's UNet config needs the pooled width.
    text_encoders = []
    hidden_total = 0
    pooled_dim = None
    if variant != REFINER:
        clip_prefix = SDXL_CLIP_L_PREFIX if family == SDXL else SD1_CLIP_PREFIX
        clip_shapes = _normalise_clip_shapes(header.with_prefix(clip_prefix))
        clip_config = CLIPTextConfig(**infer_clip_config(clip_shapes, family, name))
        state = _clip_state_dict(_load_tensors(path, clip_prefix, dtype))
        state.pop("text_projection.weight", None)
        text_encoders.append(
            _assign(lambda: CLIPTextModel(clip_config), state, "CLIP text encoder", name, adapt_keys=fit_text_keys)
        )
        del state
        hidden_total += clip_config.hidden_size

    if family == SDXL:
        # SDXL base: bigG is the second embedder; the refiner: the only one.
        prefix = REFINER_CLIP_G_PREFIX if variant == REFINER else SDXL_CLIP_G_PREFIX
        clip_g = _load_open_clip(path, header, prefix, family, name, dtype)
        text_encoders.append(clip_g)
        hidden_total += clip_g.config.hidden_size
        pooled_dim = clip_g.config.projection_dim

    unet_config = infer_unet_config(
        header.with_prefix(UNET_PREFIX), family, name, pooled_dim=pooled_dim, variant=variant
    )
    if unet_config["cross_attention_dim"] != hidden_total:
        raise ModelLoadError(
            f"Checkpoint {name!r}: its UNet expects {unet_config['cross_attention_dim']}-wide text "
            f"embeddings but its text encoder(s) produce {hidden_total}; this is not a standard "
            f"{families.label_of(family, variant)} checkpoint."
        )
    state = convert_ldm_unet_checkpoint(_load_tensors(path, UNET_PREFIX, dtype), unet_config)
    unet = _assign(lambda: UNet2DConditionModel(**unet_config), state, "UNet", name)
    del state

    vae_config = infer_vae_config(header.with_prefix(VAE_PREFIX), family, name)
    state = convert_ldm_vae_checkpoint(_load_tensors(path, VAE_PREFIX, dtype), vae_config)
    vae = _assign(lambda: AutoencoderKL(**vae_config), state, "VAE", name)
    del state

    modules = [unet, vae, *text_encoders]
    for module in modules:
        module.to(device)
        module.eval()
        module.requires_grad_(False)
    return SingleFileModels(family=family, unet=unet, vae=vae, text_encoders=tuple(text_encoders), variant=variant)
