"""Textual-inversion embeddings: A1111 / diffusers files, used by name in a prompt.

Files: A1111's `.pt` (`string_to_param` with `step`, `sd_checkpoint`,
`sd_checkpoint_name`), `.safetensors` with `emb_params` (SD1) or
`clip_l` / `clip_g` (SDXL), and diffusers' `learned_embeds` (one tensor under
the token's name). A `.pt` is read with `torch.load(weights_only=True)`, so
one that carries pickled code is refused, never run.

In a prompt an embedding is named as in A1111 (its file name as a word,
`easynegative`) or as in ComfyUI (`embedding:easynegative`, with or without the
extension). Its vectors take the place of token embeddings in the text
encoder's input (a forward hook on the token-embedding layer for one call, so
the cached encoder is never changed): the very input diffusers'
`load_textual_inversion` gives the encoder after adding tokens. The engine
reads files by path; the node layer lists ComfyUI's `embeddings` folder and
builds the `EmbeddingLibrary`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch

from .weight_files import load_plain_tensors

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".bin")
SDXL_KEYS = ("clip_l", "clip_g")


@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding: vectors per text-encoder width ([n, width] float32)."""

    name: str
    vectors: dict  # "clip_l"/"clip_g" (SDXL files) or "" (one encoder) -> Tensor [n, width]
    step: Optional[int] = None
    sd_checkpoint: Optional[str] = None
    sd_checkpoint_name: Optional[str] = None

    @property
    def count(self) -> int:
        return max(int(v.shape[0]) for v in self.vectors.values())

    @property
    def shape(self) -> int:
        """A1111's `shape`: the vector width (clip_l + clip_g for SDXL files)."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())

    def for_encoder(self, key: str, width: int) -> torch.Tensor:
        """The vectors for one text encoder: `key` "clip_l" (SD1, SDXL's first) or "clip_g" (SDXL's
        second, the refiner's only); a single-tensor file serves any encoder of its width."""
        vectors = self.vectors.get(key, self.vectors.get(""))
        if vectors is not None and int(vectors.shape[-1]) == width:
            return vectors
        kinds = ", ".join(f"{k or 'one encoder'} {int(v.shape[-1])} wide" for k, v in self.vectors.items())
        raise ValueError(
            f"text: the embedding {self.name!r} ({kinds}) does not fit this text encoder ({key}, {width} wide): "
            "it was trained for another model family (SD1.x embeddings are 768 wide; SDXL ones carry clip_l "
            "and clip_g); use one made for this checkpoint"
        )


def _as_vectors(value, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in (1, 2) or not value.is_floating_point():
        raise ValueError(f"{where} is not a [vectors, width] float tensor")
    return (value[None] if value.ndim == 1 else value).detach().to("cpu", torch.float32)


def _read(path: str) -> dict:
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    data = load_plain_tensors(path, f"embedding {os.path.basename(path)!r}")
    if not isinstance(data, dict):
        raise ValueError(f"embedding {os.path.basename(path)!r} holds a {type(data).__name__}, not a dictionary")
    return data


def load_embedding(path: str, name: Optional[str] = None) -> Embedding:
    """Read one embedding file (any of the formats in the module docstring)."""
    name = name or os.path.splitext(os.path.basename(path))[0]
    data = _read(path)
    where = f"embedding {os.path.basename(path)!r}"
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise ValueError(f"{where}: string_to_param is empty")
        vectors = {"": _as_vectors(next(iter(params.values())), where)}
    elif any(key in data for key in SDXL_KEYS):
        vectors = {key: _as_vectors(data[key], f"{where} {key}") for key in SDXL_KEYS if key in data}
    elif "emb_params" in data:
        vectors = {"": _as_vectors(data["emb_params"], where)}
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise ValueError(
                f"{where}: not a textual-inversion embedding (expected string_to_param, emb_params, "
                "clip_l/clip_g, or a single tensor)"
            )
        vectors = {"": _as_vectors(tensors[0], where)}

    def number(key):
        value = data.get(key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def text(key):
        value = data.get(key)
        return value if isinstance(value, str) else None

    return Embedding(name, vectors, number("step"), text("sd_checkpoint"), text("sd_checkpoint_name"))


@dataclass
class EmbeddingLibrary:
    """Names -> loaders (ComfyUI's embeddings folder, listed by the node layer).

    `names` maps every accepted spelling (the file's stem, its path inside the
    folder with and without extension) to a loader called on first use.
    """

    names: dict  # name -> Callable[[], Embedding]
    _pattern: Optional[re.Pattern] = field(default=None, repr=False)

    def lookup(self, name: str) -> Optional[Embedding]:
        loader = self.names.get(name)
        if loader is None:
            lowered = {k.lower(): v for k, v in self.names.items()}
            loader = lowered.get(name.lower())
        return None if loader is None else loader()

    def _regex(self) -> re.Pattern:
        if self._pattern is None:
            bare = sorted({k for k in self.names if "/" not in k and "." not in k}, key=len, reverse=True)
            words = "|".join(re.escape(k) for k in bare)
            comfy = r"embedding:([^\s,()\[\]|]+)"
            self._pattern = re.compile(comfy + (rf"|(?<![\w-])({words})(?![\w-])" if words else ""), re.IGNORECASE)
        return self._pattern

    def split(self, text: str) -> list:
        """The text cut into plain strings and Embeddings, in order."""
        if not self.names or not text:
            return [text]
        pieces: list = []
        last = 0
        for match in self._regex().finditer(text):
            name = match.group(1) or match.group(2)
            found = self.lookup(name)
            if found is None and match.group(1):
                stem = name.rsplit(".", 1)[0] if name.lower().endswith(SUFFIXES) else name
                found = self.lookup(stem)
                if found is None:
                    shown = ", ".join(sorted(k for k in self.names if "/" not in k)[:20]) or "none"
                    raise ValueError(
                        f"text: embedding:{name} is not in ComfyUI's models/embeddings; available: {shown}"
                    )
            if found is None:
                continue
            pieces.append(text[last : match.start()])
            pieces.append(found)
            last = match.end()
        pieces.append(text[last:])
        return [p for p in pieces if not isinstance(p, str) or p]


def token_embedding_layer(encoder) -> torch.nn.Module:
    return getattr(encoder, "text_model", encoder).embeddings.token_embedding


@contextlib.contextmanager
def vectors_in_place(encoder, placements: list, key: str = "clip_l") -> Iterator[None]:
    """For one encoder call: token positions take embedding vectors instead.

    placements: [(position in the 77-token window, Embedding, row)]; key: which
    of an SDXL file's vectors this encoder takes ("clip_l" / "clip_g").
    """
    if not placements:
        yield
        return
    layer = token_embedding_layer(encoder)
    width = int(layer.embedding_dim)

    def replace(module, inputs, output):
        output = output.clone()
        for position, embedding, row in placements:
            output[:, position] = embedding.for_encoder(key, width)[row].to(output.device, output.dtype)
        return output

    for _position, embedding, _row in placements:
        embedding.for_encoder(key, width)  # a mismatch is named before the encoder runs
    handle = layer.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def library_from_files(files: dict, loader: Callable[[str, str], Embedding]) -> EmbeddingLibrary:
    """An EmbeddingLibrary for {listed name ("sub/easynegative.pt"): full path}."""
    names: dict = {}
    for listed, path in files.items():
        stem = os.path.splitext(os.path.basename(listed))[0]

        def load(path=path, stem=stem):
            return loader(path, stem)

        for key in (listed, os.path.splitext(listed)[0], stem):
            names.setdefault(key, load)
    return EmbeddingLibrary(names)


__all__ = ["Embedding", "EmbeddingLibrary", "library_from_files", "load_embedding", "vectors_in_place"]
