"""GGUF-quantized FLUX.1 / SD3 transformers (e.g. flux1-dev-Q4_K_S.gguf), kept quantized.

GGUF files (llama.cpp's container, as city96's conversions publish them)
hold the transformer in its original BFL/Stability key names, large matrices
quantized row-wise (Q8_0, Q4_K, ...) and small tensors in F32/F16. The
weights stay quantized in memory: diffusers' GGUF quantizer replaces each
linear layer by one that dequantizes its weight on the fly in the compute
dtype, which is the point of these files (a Q4 FLUX.1 dev is under 7 GB
instead of 24 GB in bf16).

The path is the safetensors one with two differences:

* names and logical shapes come from the GGUF reader (GGML lists dimensions
  innermost first, so they are reversed; quantized data is stored as bytes
  per row, so the logical width comes from the quant block sizes);
* the converted weights go through `from_single_file` with a config folder
  written locally from the shape-derived config and
  `GGUFQuantizationConfig(compute_dtype=dtype)`: nothing is fetched.
  Row-wise quantization survives the converter's row splits (fused q/k/v,
  the single blocks' linear1), which keep whole rows.

Needs the `gguf` package (pip install gguf); without it the message says so.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch

from .dit_detect import FLUX, TransformerInfo, detect_transformer
from .families import ModelLoadError
from .single_file import Header, label

GGUF_SUFFIX = ".gguf"


def is_gguf(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(GGUF_SUFFIX)


def _gguf(name: str):
    try:
        import gguf
    except ImportError:
        raise ModelLoadError(
            f"Transformer file {name!r} is a GGUF file, which needs the gguf package: install it into ComfyUI's "
            "Python (pip install gguf) and restart, or select a .safetensors transformer."
        ) from None
    return gguf


def read_gguf_header(path: str) -> Header:
    """Tensor names and logical (PyTorch-order, dequantized) shapes of a GGUF file."""
    name = label(path)
    gguf = _gguf(name)
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises plain ValueErrors/struct errors for bad files
        raise ModelLoadError(
            f"Transformer file {name!r} could not be read as GGUF ({exc}). The file is corrupt or truncated: "
            "download it again."
        ) from exc
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    return Header(path=path, shapes=shapes)


def detect_gguf(path: str) -> TransformerInfo:
    return detect_transformer(read_gguf_header(path))


def logical_shape(tensor) -> tuple:
    """A tensor's shape, the dequantized one for a GGUF-quantized tensor."""
    return tuple(getattr(tensor, "quant_shape", tensor.shape))


def load_gguf_transformer(path: str, info: TransformerInfo, dtype: torch.dtype):
    """The transformer of a GGUF file, its linear weights still quantized."""
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig, SD3Transformer2DModel
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    from . import dit_configs
    from .dit_convert import transformer_to_diffusers

    name = label(path)
    _gguf(name)
    raw = load_gguf_checkpoint(path)
    n = len(info.prefix)
    state = {}
    for key, value in raw.items():
        if key.startswith(info.prefix):
            plain = type(value) is torch.Tensor and value.is_floating_point()
            state[key[n:]] = value.to(dtype) if plain else value
    del raw
    try:
        state = transformer_to_diffusers(info, state)
    except KeyError as exc:
        raise ModelLoadError(
            f"Transformer file {name!r} ({info.label}, GGUF) holds a tensor {exc.args[0]!r} that no FLUX.1/SD3 "
            "transformer has: the file is damaged or a variant Diffusers Studio does not support."
        ) from None
    config = dit_configs.transformer_config(info, state, name)
    cls = FluxTransformer2DModel if info.family == FLUX else SD3Transformer2DModel
    with tempfile.TemporaryDirectory(prefix="ds-gguf-config-") as folder:
        with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as fh:
            json.dump({"_class_name": cls.__name__, **config}, fh)
        try:
            return cls.from_single_file(
                state,
                config=folder,
                quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                torch_dtype=dtype,
                local_files_only=True,
            )
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(
                f"Transformer file {name!r} ({info.label}, GGUF): its weights do not fit the architecture read "
                f"from the file ({str(exc)[:400]}). The file is damaged or a variant Diffusers Studio does not "
                "support."
            ) from exc
