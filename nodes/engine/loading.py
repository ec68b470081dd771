"""Load a checkpoint (diffusers folder or single .safetensors file) into bundles.

`load_checkpoint` is the one entry point the node layer calls. It returns the
three socket values of a model loader (DS_MODEL, DS_TEXT_ENCODER, DS_VAE) with
every module in eval mode and frozen, on the requested device and dtype.

Everything is offline: each `from_pretrained` passes `local_files_only=True`,
single files are converted from their own tensors plus the configs bundled
under `configs/`, and no pickle file is ever opened (see `single_file.py`).
Every predictable mistake raises `ModelLoadError` (a ValueError) whose message
names the file, what was found and what to do.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
import weakref
from typing import NamedTuple

import torch

from . import families, single_file
from .components import BASE, REFINER, SD1, SDXL, ModelBundle, TextEncoderBundle, VAEBundle
from .families import ModelLoadError
from .single_file import label

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointCache",
    "ModelLoadError",
    "checkpoint_cache",
    "clip_tokenizer",
    "load_checkpoint",
    "resolve_dtype",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_SD1_PIPELINES = set(families.get(SD1).pipeline_classes)
_SDXL_PIPELINES = set(families.get(SDXL).pipeline_classes)

Loaded = tuple  # (ModelBundle, TextEncoderBundle, VAEBundle)


# --------------------------------------------------------------------- dtype


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """"auto" is float16 on CUDA (the usual inference precision), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    elif dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")


def _normalise_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# --------------------------------------------------------------------- cache


class CacheKey(NamedTuple):
    realpath: str
    fingerprint: tuple
    dtype: str
    device: str
    tokenizer_dir: str


class CheckpointCache:
    """Loaded checkpoints, keyed by file identity, dtype, device and tokenizer.

    Why: ComfyUI re-runs a loader node whenever its output cache misses (a
    second loader node names the same checkpoint, the HTTP API queues a new
    graph). Loading a full SDXL file takes tens of seconds and doubles memory
    while both copies live, so the same file (same real path, size and mtime)
    with the same dtype and device gives back the very same bundles. The
    modules are never mutated by the pack (adapters are values, see
    components.py), so sharing them is safe.

    The cache holds only weak references: the strong ones belong to whoever
    uses the bundles, in practice ComfyUI's own node-output cache. When ComfyUI
    drops its outputs ("Free model and node cache", POST /free, or a loader
    switched to another checkpoint) nothing here keeps the weights alive, so
    memory goes back as it does for ComfyUI's native loaders. A changed file
    (new size or mtime) is a new key, and its stale entry is dropped when the
    new one is stored.
    """

    def __init__(self):
        self._entries: dict[CacheKey, tuple] = {}
        self._lock = threading.Lock()

    def get(self, key: CacheKey) -> Loaded | None:
        with self._lock:
            refs = self._entries.get(key)
            values = tuple(ref() for ref in refs) if refs else None
            if values is None or any(v is None for v in values):
                self._entries.pop(key, None)
                return None
            return values

    def put(self, key: CacheKey, value: Loaded) -> None:
        with self._lock:
            stale = [k for k in self._entries if k._replace(fingerprint=key.fingerprint) == key and k != key]
            for k in stale:
                del self._entries[k]
            self._entries[key] = tuple(weakref.ref(v) for v in value)

    def drop(self, path: str | os.PathLike) -> int:
        """Forget every entry of `path` (any dtype/device); returns how many."""
        realpath = os.path.realpath(os.fspath(path))
        with self._lock:
            keys = [k for k in self._entries if k.realpath == realpath]
            for k in keys:
                del self._entries[k]
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def describe(self) -> list[dict]:
        """The live entries: file, family, dtype, device (for a status route)."""
        out = []
        with self._lock:
            entries = list(self._entries.items())
        for key, refs in entries:
            values = [ref() for ref in refs]
            if any(v is None for v in values):
                continue
            model = values[0]
            device = next(model.unet.parameters()).device
            out.append(
                {"path": key.realpath, "name": model.name, "family": model.family,
                 "dtype": key.dtype, "device": str(device)}
            )
        return out

    def __len__(self) -> int:
        """How many entries are still alive."""
        with self._lock:
            return sum(all(ref() is not None for ref in refs) for refs in self._entries.values())


checkpoint_cache = CheckpointCache()


def _stat(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def _fingerprint(path: str) -> tuple:
    """Size and mtime of the file, or of every file a diffusers folder loads."""
    if not os.path.isdir(path):
        return _stat(path)
    parts = []
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if os.path.isdir(full):
            parts.extend((entry, f, _stat(os.path.join(full, f))) for f in sorted(os.listdir(full)))
        else:
            parts.append((entry, _stat(full)))
    return tuple(parts)


# ---------------------------------------------------------------- tokenizers


def clip_tokenizer(directory: str | os.PathLike, *, pad_token: str | None = None):
    """A CLIP tokenizer from a vocab folder (e.g. ComfyUI's comfy/sd1_tokenizer).

    model_max_length is forced to 77, CLIP's real window (ComfyUI's copy says
    8192). SDXL's second tokenizer pads with "!" like the real tokenizer_2.
    """
    from transformers import CLIPTokenizer

    kwargs = {"model_max_length": 77, "local_files_only": True}
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    return CLIPTokenizer.from_pretrained(os.fspath(directory), **kwargs)


# --------------------------------------------------------------------- entry


def load_checkpoint(
    path: str | os.PathLike,
    *,
    dtype: str = "auto",
    tokenizer_dir: str | os.PathLike,
    t5_tokenizer_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    use_cache: bool = True,
) -> tuple[ModelBundle, TextEncoderBundle, VAEBundle]:
    """Load an SD1.x / SDXL / SDXL refiner checkpoint as (DS_MODEL, DS_TEXT_ENCODER, DS_VAE).

    path: a diffusers pipeline folder (with model_index.json) or a single
    .safetensors checkpoint in the original LDM/A1111 layout.
    dtype: "auto" (float16 on CUDA, float32 otherwise), "float32", "float16"
    or "bfloat16".
    tokenizer_dir: the CLIP vocabulary used for single files (ComfyUI's
    comfy/sd1_tokenizer); diffusers folders bring their own tokenizers.
    t5_tokenizer_dir: the T5 tokenizer for FLUX.1 / SD3 all-in-one files
    (ComfyUI's comfy/text_encoders/t5_tokenizer), which are detected from
    their header and loaded by `dit_loading`.
    use_cache: give back the cached bundles of an identical earlier load
    (see `CheckpointCache`).
    """
    path = os.fspath(path)
    device = _normalise_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if not os.path.exists(path):
        raise ModelLoadError(
            f"Checkpoint {label(path)!r} was not found. Check that the file or folder still exists: a "
            ".safetensors checkpoint belongs in models/checkpoints, a diffusers folder in "
            "models/diffusers; refresh the model list and select it again."
        )
    is_folder = os.path.isdir(path)
    if not is_folder:
        single_file.check_suffix(path)

    key = CacheKey(
        realpath=os.path.realpath(path),
        fingerprint=_fingerprint(path),
        dtype=str(torch_dtype),
        device=str(device),
        tokenizer_dir="" if is_folder else _tokenizer_key(tokenizer_dir, t5_tokenizer_dir),
    )
    if use_cache:
        cached = checkpoint_cache.get(key)
        if cached is not None:
            logger.debug("Checkpoint %s served from the cache", label(path))
            return cached

    # Models the host has let go may still be waiting in reference cycles (a
    # host can hang its own handle on a module, as the node layer does);
    # collect them before allocating another model, so that switching
    # checkpoints holds one at a time instead of two until the next idle gc.
    gc.collect()
    started = time.perf_counter()
    if is_folder:
        loaded = _load_diffusers_folder(path, torch_dtype, device)
    else:
        loaded = _load_single_file(path, torch_dtype, device, os.fspath(tokenizer_dir), t5_tokenizer_dir)
    logger.info(
        "Loaded %s checkpoint %s (%s, %s) in %.1f s",
        families.of(loaded[0]).log_name, label(path), torch_dtype, device, time.perf_counter() - started,
    )
    if use_cache:
        checkpoint_cache.put(key, loaded)
    return loaded


def _tokenizer_key(tokenizer_dir, t5_tokenizer_dir) -> str:
    key = os.path.realpath(os.fspath(tokenizer_dir))
    if t5_tokenizer_dir is not None:
        key += "|" + os.path.realpath(os.fspath(t5_tokenizer_dir))
    return key


def peek_family(path: str | os.PathLike) -> families.Family:
    """The family of a checkpoint (file or diffusers folder) without loading any weights.

    Reads the safetensors header or model_index.json only, so a caller that
    builds a graph (the A1111 routes) can ask what a checkpoint is. Raises
    ModelLoadError (a ValueError) as loading would.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return families.get(*_folder_family(path, _read_model_index(path)))
    single_file.check_suffix(path)
    header = single_file.read_header(path)
    from .dit_loading import dit_checkpoint_info

    dit = dit_checkpoint_info(header)
    if dit is not None:
        return families.get(dit.family, dit.registry_variant)
    return families.get(*single_file.detect_model(header))


def _bundles(family, name, unet, vae, text_encoders, tokenizers, scheduler_config, dtype, variant=BASE) -> Loaded:
    if families.get(family, variant).keep_vae_float32(vae, dtype):
        vae = vae.to(torch.float32)
    # The VAE's shift_factor (SD3, Flux; None for SD1/SDXL VAEs, which keeps their path unchanged).
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    model = ModelBundle(
        family=family,
        name=name,
        unet=unet,
        scheduler_config=scheduler_config,
        dtype=dtype,
        latent_scaling_factor=float(vae.config.scaling_factor),
        vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        variant=variant,
        latent_shift_factor=shift,
    )
    text = TextEncoderBundle(
        family=family, name=name, tokenizers=tuple(tokenizers), text_encoders=tuple(text_encoders), variant=variant,
        joint_width=int(getattr(unet.config, "joint_attention_dim", 0) or 0),
    )
    return model, text, VAEBundle(family=family, name=name, vae=vae, variant=variant)


# --------------------------------------------------------------- single file


def _dit_file(path: str):
    """The FLUX.1 / SD3 transformer of an all-in-one file, or None (SD1/SDXL, or unreadable: that path reports)."""
    from .dit_loading import dit_checkpoint_info

    try:
        return dit_checkpoint_info(single_file.read_header(path))
    except ModelLoadError:
        return None


def _load_single_file(
    path: str, dtype: torch.dtype, device: torch.device, tokenizer_dir: str, t5_tokenizer_dir=None
) -> Loaded:
    dit = _dit_file(path)
    if dit is not None:
        from .dit_loading import load_dit_checkpoint_bundles

        tokenizer_dirs = {"clip": tokenizer_dir, "t5": os.fspath(t5_tokenizer_dir or "")}
        return load_dit_checkpoint_bundles(path, dit, dtype, device, tokenizer_dirs)
    models = single_file.load_single_file(path, dtype=dtype, device=device)
    # Checked after the file so that a bad file is reported as such first.
    if not os.path.isfile(os.path.join(tokenizer_dir, "vocab.json")):
        raise ModelLoadError(
            f"Checkpoint {label(path)!r} needs the CLIP tokenizer files, but {tokenizer_dir!r} has no "
            "vocab.json. Pass ComfyUI's comfy/sd1_tokenizer folder as tokenizer_dir."
        )
    family = families.of(models)
    tokenizers = [clip_tokenizer(tokenizer_dir, pad_token=slot.pad_token) for slot in family.text_encoders]
    return _bundles(
        models.family,
        label(path),
        models.unet,
        models.vae,
        models.text_encoders,
        tokenizers,
        family.scheduler_config(),
        dtype,
        variant=models.variant,
    )


# ----------------------------------------------------------- diffusers folder


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers renamed `torch_dtype` to `dtype` in 4.56."""
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__).release >= (4, 56):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


def _read_model_index(path: str) -> dict:
    index_path = os.path.join(path, "model_index.json")
    if not os.path.isfile(index_path):
        raise ModelLoadError(
            f"Folder {label(path)!r} has no model_index.json, so it is not a diffusers pipeline folder. "
            "Select a folder saved with save_pretrained (it holds model_index.json, unet/, vae/, "
            "text_encoder/, tokenizer/ ...) or a single .safetensors checkpoint."
        )
    try:
        with open(index_path, encoding="utf-8") as fh:
            index = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Folder {label(path)!r}: model_index.json could not be read ({exc}). Repair or re-download it."
        ) from exc
    if not isinstance(index, dict):
        raise ModelLoadError(
            f"Folder {label(path)!r}: model_index.json is not a JSON object. Repair or re-download it."
        )
    return index


def _folder_family(path: str, index: dict) -> tuple[str, str]:
    """(family, variant) of a diffusers folder from its model_index.json."""
    name = label(path)
    cls = index.get("_class_name")
    transformer_family = families.for_pipeline_class(cls)
    if transformer_family is not None:
        return transformer_family.family, transformer_family.folder_variant(path)
    has = lambda comp: isinstance(index.get(comp), list) and index[comp][0] is not None  # noqa: E731
    if cls in _SDXL_PIPELINES or (cls not in _SD1_PIPELINES and has("text_encoder_2")):
        if not has("text_encoder"):
            if not has("text_encoder_2"):
                raise ModelLoadError(
                    f"Folder {name!r} is an SDXL pipeline without text encoders (model_index.json lists "
                    f"text_encoder {index.get('text_encoder')!r} and text_encoder_2 "
                    f"{index.get('text_encoder_2')!r}). An SDXL base folder needs both, an SDXL refiner "
                    "folder text_encoder_2 (OpenCLIP bigG): re-download or re-save the folder. "
                    + families.SUPPORTED_SUMMARY
                )
            # Stability's refiner: StableDiffusionXLImg2ImgPipeline with
            # text_encoder=None and requires_aesthetics_score=True.
            return SDXL, REFINER
        return SDXL, BASE
    if cls in _SD1_PIPELINES:
        return SD1, BASE
    raise ModelLoadError(
        f"Folder {name!r} is a diffusers folder for {cls or 'an unknown pipeline'}, which Diffusers Studio "
        "cannot load. " + families.SUPPORTED_SUMMARY
    )


def _check_components(path: str, index: dict, family: str, variant: str = BASE) -> None:
    name = label(path)
    spec = families.get(family, variant)
    needed = spec.folder_components
    for component in needed:
        folder = os.path.join(path, component)
        entry = index.get(component)
        if not (isinstance(entry, list) and entry and entry[0] is not None) or not os.path.isdir(folder):
            raise ModelLoadError(
                f"Folder {name!r} has no {component!r} component (model_index.json entry: {entry!r}, "
                f"folder present: {os.path.isdir(folder)}). A {spec.label} pipeline "
                f"needs {', '.join(needed)}: re-download or re-save the folder."
            )


def _folder_has(path: str, index: dict, component: str) -> bool:
    entry = index.get(component)
    present = isinstance(entry, list) and bool(entry) and entry[0] is not None
    return present and os.path.isdir(os.path.join(path, component))


def _from_pretrained(path: str, component: str, loader, **kwargs):
    try:
        return loader(os.path.join(path, component), local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            f"Folder {label(path)!r}: its {component!r} component could not be loaded ({exc}). "
            "Its files are missing or damaged: re-download or re-save the folder."
        ) from exc


def _folder_scheduler_config(path: str, spec: families.Family) -> dict:
    config_path = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isfile(config_path):
        logger.warning(
            "Folder %s has no scheduler/scheduler_config.json; using the %s reference scheduler config",
            label(path), spec.family,
        )
        return spec.scheduler_config()
    try:
        with open(config_path, encoding="utf-8") as fh:
            return dict(json.load(fh))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"Folder {label(path)!r}: scheduler/scheduler_config.json could not be read ({exc}). "
            "Repair or re-download it."
        ) from exc


def _load_diffusers_folder(path: str, dtype: torch.dtype, device: torch.device) -> Loaded:
    import diffusers
    import transformers

    index = _read_model_index(path)
    family, variant = _folder_family(path, index)
    _check_components(path, index, family, variant)
    spec = families.get(family, variant)
    logger.info("Loading %s diffusers folder %s", spec.log_name, label(path))

    denoiser_cls = getattr(diffusers, spec.denoiser_class)
    unet = _from_pretrained(path, spec.denoiser_folder, denoiser_cls.from_pretrained, torch_dtype=dtype)
    vae = _from_pretrained(path, "vae", diffusers.AutoencoderKL.from_pretrained, torch_dtype=dtype)
    text_encoders, tokenizers = [], []
    for slot in spec.text_encoders:
        if slot.optional and not _folder_has(path, index, slot.folder):
            # SD3 saved without T5: diffusers conditions on zeros in its place.
            logger.info("Folder %s has no %s; its prompts get zeros in its place", label(path), slot.folder)
            text_encoders.append(None)
            tokenizers.append(None)
            continue
        encoder_cls = getattr(transformers, slot.encoder_class)
        tokenizer_cls = getattr(transformers, slot.tokenizer_class)
        text_encoders.append(_from_pretrained(path, slot.folder, encoder_cls.from_pretrained, **_dtype_kwarg(dtype)))
        tokenizers.append(_from_pretrained(path, slot.tokenizer_folder, tokenizer_cls.from_pretrained))

    for module in (unet, vae, *[e for e in text_encoders if e is not None]):
        module.to(device)
        module.eval()
        module.requires_grad_(False)
    spec.check_folder_denoiser(path, unet, text_encoders)
    return _bundles(
        family, label(path), unet, vae, text_encoders, tokenizers, _folder_scheduler_config(path, spec), dtype,
        variant=variant,
    )
