"""Loading FLUX.1 and SD3/SD3.5 from single files: all-in-one checkpoints and split files.

Two ways these models are distributed besides diffusers folders:

* all-in-one checkpoints (ComfyUI's CheckpointSave layout, e.g.
  flux1-dev-fp8.safetensors, sd3.5_large_fp8_scaled.safetensors): the
  transformer under `model.diffusion_model.`, the text encoders under
  `text_encoders.clip_l|clip_g|t5xxl.transformer.`, the VAE under
  `first_stage_model.`: `load_dit_checkpoint`;
* split files, as BFL and Stability publish them and ComfyUI's folders hold
  them: the transformer in models/diffusion_models (or models/unet), the text
  encoders in models/text_encoders (clip_l, clip_g, t5xxl_fp16 or
  t5xxl_fp8_e4m3fn), the VAE in models/vae (ae.safetensors):
  `load_dit_split`. Which encoder file is which is read from the shapes, not
  the names.

Both give the components dict `FluxPipeline.from_pretrained(folder)` /
`StableDiffusion3Pipeline.from_pretrained(folder)` would have (same keys,
same classes), so the family code treats a folder and a file alike and
`FluxPipeline(**components)` works. Steps: the header says what each file is
(`dit_detect`); the tensors are read, fp8 dequantized (`dit_tensors`) and
renamed (`dit_convert`); the configs are the shipped ones completed from the
shapes (`dit_configs`); modules are built on the meta device and the
tensors assigned (`single_file._assign`). Nothing touches a hub; tokenizers
come from folders the caller passes (ComfyUI's comfy/sd1_tokenizer and
comfy/text_encoders/t5_tokenizer), so the engine never imports ComfyUI.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import torch

from . import dit_configs
from .dit_convert import clip_state, t5_state, transformer_to_diffusers
from .dit_detect import (
    DIT_SUMMARY,
    FLUX,
    SD3,
    CheckpointInfo,
    EncoderInfo,
    TransformerInfo,
    assign_clip_roles,
    detect_checkpoint,
    detect_encoder,
    detect_transformer,
    detect_vae,
)
from .dit_gguf import detect_gguf, is_gguf, load_gguf_transformer
from .dit_tensors import read_component
from .float8_storage import keep_float8
from .families import ModelLoadError
from .single_file import _assign, check_suffix, fit_text_keys, label, read_header

logger = logging.getLogger(__name__)

T5_MAX_LENGTH = 512  # the T5 tokenizer's window in the FLUX.1 and SD3 repositories

# Keys of other components, skipped when a transformer's own keys carry no prefix.
_OTHER_COMPONENTS = ("text_encoders.", "first_stage_model.", "vae.", "cond_stage_model.", "conditioner.")


# ------------------------------------------------------------ tokenizers


def _tokenizers(family: str, tokenizer_dirs: Mapping[str, str], with_t5: bool, what: str) -> dict:
    """The family's tokenizers from the vocabulary folders passed in.

    tokenizer_dirs: {"clip": a CLIP BPE folder (vocab.json, merges.txt),
    "t5": a T5 folder (tokenizer.json)}.
    """
    from transformers import T5TokenizerFast

    from .loading import clip_tokenizer

    def folder(kind: str, needed: str) -> str:
        path = os.fspath(tokenizer_dirs.get(kind, "") or "")
        if not os.path.isfile(os.path.join(path, needed)):
            raise ModelLoadError(
                f"{what} needs the {kind.upper()} tokenizer files, but {path!r} has no {needed}. Pass ComfyUI's "
                + ("comfy/sd1_tokenizer" if kind == "clip" else "comfy/text_encoders/t5_tokenizer")
                + f" folder as tokenizer_dirs[{kind!r}]."
            )
        return path

    clip = folder("clip", "vocab.json")
    out = {"tokenizer": clip_tokenizer(clip)}
    if family == SD3:
        # SD3's second (OpenCLIP bigG) tokenizer pads with "!", as SDXL's.
        out["tokenizer_2"] = clip_tokenizer(clip, pad_token="!")
    t5_slot = "tokenizer_2" if family == FLUX else "tokenizer_3"
    out[t5_slot] = None
    if with_t5:
        out[t5_slot] = T5TokenizerFast.from_pretrained(
            folder("t5", "tokenizer.json"), model_max_length=T5_MAX_LENGTH, local_files_only=True
        )
    return out


# ------------------------------------------------------------ components


def _finish(module: torch.nn.Module, device) -> torch.nn.Module:
    module.to(device)
    module.eval()
    module.requires_grad_(False)
    return module


def _load_transformer(path: str, info: TransformerInfo, dtype: torch.dtype, name: str):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    exclude = () if info.prefix else _OTHER_COMPONENTS
    state = read_component(path, info.prefix, dtype, exclude=exclude, keep_float8=True)
    try:
        state = transformer_to_diffusers(info, state)
    except KeyError as exc:
        raise ModelLoadError(
            f"Transformer file {name!r} ({info.label}, {info.layout} layout) holds a tensor {exc.args[0]!r} "
            "that no FLUX.1/SD3 transformer has: the file is damaged or a variant Diffusers Studio does not "
            "support. " + DIT_SUMMARY
        ) from None
    config = dit_configs.transformer_config(info, state, name)
    cls = FluxTransformer2DModel if info.family == FLUX else SD3Transformer2DModel
    return keep_float8(_assign(lambda: cls(**config), state, f"{info.label} transformer", name), dtype)


def _load_vae(path: str, prefix: str, family: str, dtype: torch.dtype, diffusers_layout: bool = False):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    name = label(path)
    state = read_component(path, prefix, dtype)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if diffusers_layout:
        config = dit_configs.diffusers_vae_config(family, shapes, name)
    else:
        config = dit_configs.vae_config(family, shapes, name)
        state = convert_ldm_vae_checkpoint(state, config)
    return _assign(lambda: AutoencoderKL(**config), state, "VAE", name)


def _load_clip(path: str, prefix: str, family: str, component: str, dtype: torch.dtype):
    """A CLIP tower: CLIPTextModel for Flux, CLIPTextModelWithProjection for SD3."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    name = label(path)
    state = clip_state(read_component(path, prefix, dtype))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = CLIPTextConfig(**dit_configs.clip_config(family, component, shapes, name))
    if family == FLUX:
        state.pop("text_projection.weight", None)
        cls = CLIPTextModel
    else:
        cls = CLIPTextModelWithProjection
        if "text_projection.weight" not in state and component == "text_encoder":
            # SD3 files of CLIP-L may omit its projection; SD3 then uses the identity.
            state["text_projection.weight"] = torch.eye(config.hidden_size, dtype=dtype)
    return _assign(lambda: cls(config), state, "CLIP text encoder", name, adapt_keys=fit_text_keys)


def _load_t5(path: str, prefix: str, family: str, component: str, dtype: torch.dtype):
    from transformers import T5Config, T5EncoderModel

    name = label(path)
    state = t5_state(read_component(path, prefix, dtype, keep_float8=True))
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = T5Config(**dit_configs.t5_config(family, component, shapes, name))
    model = _assign(lambda: T5EncoderModel(config), state, "T5 text encoder", name)
    if dtype == torch.float16:
        # As from_pretrained does (T5's _keep_in_fp32_modules): the feed-forward
        # output overflows in float16.
        for module_name, module in model.named_modules():
            if module_name.split(".")[-1] in (T5EncoderModel._keep_in_fp32_modules or []):
                module.to(torch.float32)
    # The feed-forward casts its activations to `wo.weight`'s dtype before calling `wo`: its float8
    # weights are upcast together when the feed-forward starts.
    return keep_float8(model, dtype, groups=("DenseReluDense",))


# ------------------------------------------------------------ checks


def _check_encoder_set(info: TransformerInfo, roles: dict, where: str) -> None:
    """The family's encoder set: Flux CLIP-L + T5; SD3 CLIP-L + CLIP-G (+ T5, optional)."""
    if info.family == FLUX:
        if "clip_g" in roles:
            raise ModelLoadError(
                f"{where}: {label(roles['clip_g'])!r} is an OpenCLIP bigG (clip_g) text encoder, which SD3 uses; "
                f"{info.label} uses CLIP-L and T5-XXL only. Remove clip_g and select clip_l.safetensors and a "
                "t5xxl file (t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors)."
            )
        if "t5xxl" not in roles:
            raise ModelLoadError(
                f"{where}: {info.label} needs a T5-XXL text encoder, but none was given. Put "
                "t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors) in models/text_encoders and select it."
            )
        if "clip_l" not in roles:
            raise ModelLoadError(
                f"{where}: {info.label} needs the CLIP-L text encoder, but none was given. Select "
                "clip_l.safetensors from models/text_encoders."
            )
    else:
        missing = [r for r in ("clip_l", "clip_g") if r not in roles]
        if missing:
            raise ModelLoadError(
                f"{where}: {info.label} needs the CLIP-L and OpenCLIP bigG text encoders, but "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing. Select clip_l.safetensors "
                "and clip_g.safetensors (and optionally a t5xxl file) from models/text_encoders."
            )


def _check_fit(info: TransformerInfo, c: dict, where: str) -> None:
    """The encoders' and VAE's widths against the transformer's inputs."""
    t = c["transformer"].config
    t5 = c["text_encoder_2"] if info.family == FLUX else c.get("text_encoder_3")
    if t5 is not None and t5.config.d_model != t.joint_attention_dim:
        raise ModelLoadError(
            f"{where}: the T5 encoder is {t5.config.d_model} wide but the {info.label} transformer takes "
            f"{t.joint_attention_dim}-wide text; select the T5-XXL encoder (t5xxl_fp16 / t5xxl_fp8_e4m3fn)."
        )
    if info.family == FLUX:
        pooled = c["text_encoder"].config.hidden_size
    else:
        pooled = c["text_encoder"].config.projection_dim + c["text_encoder_2"].config.projection_dim
    if pooled != t.pooled_projection_dim:
        raise ModelLoadError(
            f"{where}: the CLIP encoders give {pooled}-wide pooled text but the {info.label} transformer takes "
            f"{t.pooled_projection_dim}; the text encoders belong to another model. Select clip_l.safetensors"
            + (" and clip_g.safetensors." if info.family == SD3 else ".")
        )
    latent = c["vae"].config.latent_channels
    out = t.out_channels or t.in_channels
    expected = latent * 4 if info.family == FLUX else latent  # Flux packs 2x2 latent patches
    if out != expected:
        raise ModelLoadError(
            f"{where}: the VAE has {latent} latent channels but the {info.label} transformer works on "
            f"{out // 4 if info.family == FLUX else out}; it belongs to another model family. Select "
            + ("ae.safetensors (the FLUX.1 VAE)." if info.family == FLUX else "the SD3 VAE.")
        )


def _components(info: TransformerInfo, transformer, vae, encoders: dict, tokenizers: dict) -> dict:
    scheduler = _scheduler(info)
    if info.family == FLUX:
        return {
            "scheduler": scheduler, "vae": vae,
            "text_encoder": encoders["clip_l"], "tokenizer": tokenizers["tokenizer"],
            "text_encoder_2": encoders["t5xxl"], "tokenizer_2": tokenizers["tokenizer_2"],
            "transformer": transformer, "image_encoder": None, "feature_extractor": None,
        }
    return {
        "transformer": transformer, "scheduler": scheduler, "vae": vae,
        "text_encoder": encoders["clip_l"], "tokenizer": tokenizers["tokenizer"],
        "text_encoder_2": encoders["clip_g"], "tokenizer_2": tokenizers["tokenizer_2"],
        "text_encoder_3": encoders.get("t5xxl"), "tokenizer_3": tokenizers["tokenizer_3"],
        "image_encoder": None, "feature_extractor": None,
    }


def _scheduler(info: TransformerInfo):
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = dit_configs.scheduler_config(info)
    config.pop("_class_name", None)
    return FlowMatchEulerDiscreteScheduler.from_config(config)


_COMPONENT_OF_ROLE = {
    (FLUX, "clip_l"): "text_encoder", (FLUX, "t5xxl"): "text_encoder_2",
    (SD3, "clip_l"): "text_encoder", (SD3, "clip_g"): "text_encoder_2", (SD3, "t5xxl"): "text_encoder_3",
}


def _load_encoder(role: str, path: str, prefix: str, family: str, dtype: torch.dtype):
    component = _COMPONENT_OF_ROLE[(family, role)]
    if role == "t5xxl":
        return _load_t5(path, prefix, family, component, dtype)
    return _load_clip(path, prefix, family, component, dtype)


# ------------------------------------------------------------ entry points


def detect(path: str | os.PathLike) -> TransformerInfo:
    """What transformer a file holds (header only): family, variant, layout."""
    path = os.fspath(path)
    if is_gguf(path):
        return detect_gguf(path)
    check_suffix(path)
    return detect_transformer(read_header(path))


def load_dit_checkpoint(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype,
    tokenizer_dirs: Mapping[str, str],
    device: torch.device | str = "cpu",
) -> dict:
    """An all-in-one FLUX.1 / SD3 checkpoint as the pipeline's components dict."""
    path = os.fspath(path)
    name = label(path)
    if is_gguf(path):
        raise ModelLoadError(
            f"Checkpoint {name!r} is a GGUF file, which holds a transformer only. Put it in models/unet (or "
            "models/diffusion_models) and load it with the split loader together with its text encoders and VAE."
        )
    check_suffix(path)
    header = read_header(path)
    found: CheckpointInfo = detect_checkpoint(header)
    info = found.transformer
    where = f"Checkpoint {name!r} ({info.label})"
    if found.vae_prefix is None or not found.encoder_prefixes:
        absent = ([] if found.encoder_prefixes else ["text encoders"]) + ([] if found.vae_prefix else ["VAE"])
        raise ModelLoadError(
            f"{where} holds the transformer but no {' and no '.join(absent)}: it is a diffusion-model file, "
            "not an all-in-one checkpoint. Put it in models/diffusion_models and load it with the split loader "
            "together with its text encoders (models/text_encoders) and VAE (models/vae)."
        )
    roles = {role: path for role in found.encoder_prefixes}
    _check_encoder_set(info, roles, where)
    logger.info("Loading %s all-in-one checkpoint %s (%s layout)", info.label, name, info.layout)
    tokenizers = _tokenizers(info.family, tokenizer_dirs, "t5xxl" in roles, where)
    transformer = _load_transformer(path, info, dtype, name)
    vae = _load_vae(path, found.vae_prefix, info.family, dtype)
    encoders = {
        role: _load_encoder(role, path, prefix, info.family, dtype) for role, prefix in found.encoder_prefixes.items()
    }
    components = _components(info, transformer, vae, encoders, tokenizers)
    _check_fit(info, components, where)
    for module in (transformer, vae, *encoders.values()):
        _finish(module, device)
    return components


def classify_encoders(paths: Sequence[str | os.PathLike]) -> dict[str, EncoderInfo]:
    """{"clip_l"|"clip_g"|"t5xxl": EncoderInfo} for text-encoder files, by their shapes."""
    infos = []
    for p in paths:
        p = os.fspath(p)
        if is_gguf(p):
            raise ModelLoadError(
                f"Text encoder file {label(p)!r} is a GGUF file; Diffusers Studio reads GGUF transformers only. "
                "Select a .safetensors T5 instead (t5xxl_fp8_e4m3fn.safetensors is the smallest)."
            )
        check_suffix(p)
        infos.append(detect_encoder(read_header(p)))
    t5s = [i for i in infos if i.kind == "t5"]
    if len(t5s) > 1:
        raise ModelLoadError(
            f"Text encoder files {', '.join(repr(label(i.path)) for i in t5s)} are all T5 encoders; select one "
            "(t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors)."
        )
    roles = assign_clip_roles([i for i in infos if i.kind == "clip"])
    if t5s:
        roles["t5xxl"] = t5s[0]
    return roles


def identify_split(
    transformer_path: str | os.PathLike, encoder_paths: Sequence[str | os.PathLike], vae_path: str | os.PathLike
) -> tuple[TransformerInfo, dict[str, EncoderInfo], tuple[str, bool]]:
    """What each split file is, from headers only, and whether they fit together.

    Cheap enough for a node's input validation: a wrong combination (an SD3
    clip_g with FLUX.1, a missing T5, an SD1 file as the transformer) is a
    ModelLoadError naming the file and the fix before any weight is read.
    Returns (transformer info, encoder roles, (VAE key prefix, diffusers layout)).
    """
    transformer_path, vae_path = os.fspath(transformer_path), os.fspath(vae_path)
    info = detect(transformer_path)
    where = f"Transformer {label(transformer_path)!r} ({info.label})"
    roles = classify_encoders(encoder_paths)
    _check_encoder_set(info, {r: e.path for r, e in roles.items()}, where)
    check_suffix(vae_path)
    return info, roles, detect_vae(read_header(vae_path))


def load_dit_split(
    transformer_path: str | os.PathLike,
    encoder_paths: Sequence[str | os.PathLike],
    vae_path: str | os.PathLike,
    *,
    dtype: torch.dtype,
    tokenizer_dirs: Mapping[str, str],
    device: torch.device | str = "cpu",
) -> dict:
    """A transformer file plus text-encoder files plus a VAE file as the pipeline's components dict.

    The transformer may be a .safetensors file or a GGUF file (kept quantized,
    see `dit_gguf`).

    Every file is identified from its header before any weight is read, so a
    wrong combination fails at once with the file named.
    """
    transformer_path, vae_path = os.fspath(transformer_path), os.fspath(vae_path)
    info, roles, (vae_prefix, vae_diffusers) = identify_split(transformer_path, encoder_paths, vae_path)
    name = label(transformer_path)
    where = f"Transformer {name!r} ({info.label})"
    logger.info("Loading %s from %s (%s layout) with %s", info.label, name, info.layout,
                ", ".join(label(e.path) for e in roles.values()))
    tokenizers = _tokenizers(info.family, tokenizer_dirs, "t5xxl" in roles, where)
    if is_gguf(transformer_path):
        transformer = load_gguf_transformer(transformer_path, info, dtype)
    else:
        transformer = _load_transformer(transformer_path, info, dtype, name)
    vae = _load_vae(vae_path, vae_prefix, info.family, dtype, vae_diffusers)
    encoders = {role: _load_encoder(role, e.path, e.prefix, info.family, dtype) for role, e in roles.items()}
    components = _components(info, transformer, vae, encoders, tokenizers)
    _check_fit(info, components, where)
    for module in (transformer, vae, *encoders.values()):
        _finish(module, device)
    return components
