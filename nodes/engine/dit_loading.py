"""FLUX.1 / SD3 single and split files as the loader's bundles.

`single_file_dit` gives the components dict a diffusers folder would give;
this module turns it into the same (DS_MODEL, DS_TEXT_ENCODER, DS_VAE)
bundles `loading._load_diffusers_folder` builds, so a file and a folder of
the same weights sample identically: the family and variant from the header
(`TransformerInfo.registry_variant`), the text encoders in the family's slot
order (Flux: CLIP-L, T5; SD3: CLIP-L, CLIP-G, T5 or None), the transformer in
the `unet` slot, the scheduler config of the shipped reference config, and
the VAE's scaling/shift factors (read in `loading._bundles`).

Split files go through the same weak-reference cache as checkpoints, keyed by
every file, so a second loader node on the same files reuses the weights.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Mapping, Optional, Sequence

import torch

from . import families, single_file_dit
from .dit_detect import FLUX, SD3, TransformerInfo, detect_transformer
from .families import ModelLoadError
from .loading import CacheKey, Loaded, _bundles, _normalise_device, _stat, checkpoint_cache, resolve_dtype
from .single_file import label

logger = logging.getLogger(__name__)

__all__ = ["dit_checkpoint_info", "load_dit_checkpoint_bundles", "load_split"]

_ENCODER_SLOTS = {
    FLUX: ("text_encoder", "text_encoder_2"),
    SD3: ("text_encoder", "text_encoder_2", "text_encoder_3"),
}


def dit_checkpoint_info(header) -> Optional[TransformerInfo]:
    """The FLUX.1 / SD3 transformer a checkpoint header holds, or None for anything else.

    Why None rather than an error: the checkpoint loader asks this of every
    file first and sends everything that is no DiT down the SD1/SDXL path
    unchanged, which reports its own problems.
    """
    try:
        return detect_transformer(header, role="checkpoint")
    except ModelLoadError:
        return None


def check_supported(info: TransformerInfo, name: str) -> None:
    """A variant detected in a file but without a sampling family is refused before loading, naming it.

    (Every FLUX.1 and SD3 variant in dit_detect has a family today; this guards the next one.)
    """
    if (info.family, info.registry_variant) not in families.REGISTRY:
        raise ModelLoadError(
            f"{name!r} is {info.label}, which Diffusers Studio can read but not yet sample. Select a FLUX.1 dev "
            "or schnell, or an SD3 / SD3.5 model."
        )


def bundles_from_components(components: dict, info: TransformerInfo, name: str, dtype: torch.dtype) -> Loaded:
    """The components dict of `single_file_dit` as (ModelBundle, TextEncoderBundle, VAEBundle)."""
    slots = _ENCODER_SLOTS[info.family]
    encoders = [components[s] for s in slots]
    tokenizers = [components[s.replace("text_encoder", "tokenizer")] for s in slots]
    scheduler_config = dict(components["scheduler"].config)
    scheduler_config.setdefault("_class_name", type(components["scheduler"]).__name__)
    return _bundles(
        info.family, name, components["transformer"], components["vae"], encoders, tokenizers,
        scheduler_config, dtype, variant=info.registry_variant,
    )


def load_dit_checkpoint_bundles(
    path: str, info: TransformerInfo, dtype: torch.dtype, device: torch.device, tokenizer_dirs: Mapping[str, str]
) -> Loaded:
    """An all-in-one FLUX.1 / SD3 checkpoint (models/checkpoints) as bundles."""
    check_supported(info, label(path))
    components = single_file_dit.load_dit_checkpoint(path, dtype=dtype, tokenizer_dirs=tokenizer_dirs, device=device)
    return bundles_from_components(components, info, label(path), dtype)


def load_split(
    transformer_path: str | os.PathLike,
    encoder_paths: Sequence[str | os.PathLike],
    vae_path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "auto",
    tokenizer_dirs: Mapping[str, str],
    device: torch.device | str = "cpu",
    use_cache: bool = True,
) -> Loaded:
    """A transformer file, its text-encoder files and a VAE file as bundles.

    dtype: "auto" (float16 on CUDA, float32 otherwise), "float32", "float16"
    or "bfloat16". Wrong combinations fail before any weight is read, with
    the file and the fix named (`single_file_dit.identify_split`).
    """
    paths = [os.fspath(transformer_path), *map(os.fspath, encoder_paths), os.fspath(vae_path)]
    for path in paths:
        if not os.path.isfile(path):
            raise ModelLoadError(
                f"Model file {label(path)!r} was not found. Check that it still exists (transformers belong in "
                "models/diffusion_models, text encoders in models/text_encoders, VAEs in models/vae), refresh "
                "the model lists and select it again."
            )
    device = _normalise_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    info, _roles, _vae = single_file_dit.identify_split(paths[0], paths[1:-1], paths[-1])
    check_supported(info, label(paths[0]))
    key = CacheKey(
        realpath="|".join(os.path.realpath(p) for p in paths),
        fingerprint=tuple(_stat(p) for p in paths),
        dtype=str(torch_dtype),
        device=str(device),
        tokenizer_dir="|".join(os.path.realpath(os.fspath(tokenizer_dirs.get(k, ""))) for k in ("clip", "t5")),
    )
    if use_cache:
        cached = checkpoint_cache.get(key)
        if cached is not None:
            return cached
    started = time.perf_counter()
    components = single_file_dit.load_dit_split(
        paths[0], paths[1:-1], paths[-1], dtype=torch_dtype, tokenizer_dirs=tokenizer_dirs, device=device
    )
    loaded = bundles_from_components(components, info, label(paths[0]), torch_dtype)
    logger.info("Loaded %s from split files %s in %.1f s", info.label, ", ".join(label(p) for p in paths),
                time.perf_counter() - started)
    if use_cache:
        checkpoint_cache.put(key, loaded)
    return loaded
