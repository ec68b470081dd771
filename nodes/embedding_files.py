"""ComfyUI's `embeddings` folder, as the engine's EmbeddingLibrary (node and API layer).

Names come from folder_paths' listing only (never a path from a prompt), and
each file is read once per modification time.
"""
from __future__ import annotations

import logging
import os
import threading

from .comfy_bridge import ModelFolder
from .engine.embeddings import SUFFIXES, Embedding, EmbeddingLibrary, library_from_files, load_embedding

log = logging.getLogger(__name__)

EMBEDDINGS = ModelFolder("embeddings", "text", SUFFIXES, None, "textual-inversion embedding")
_cache: dict = {}
_lock = threading.Lock()


def embedding_files() -> dict:
    """{listed name: full path} for every embedding file in ComfyUI's embeddings folders."""
    EMBEDDINGS.register()
    found = {}
    for name in EMBEDDINGS.files():
        path = EMBEDDINGS.resolve(name)
        if path:
            found[name] = path
    return found


def load_cached(path: str, name: str) -> Embedding:
    """load_embedding, once per file version."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _lock:
        hit = _cache.get(key)
    if hit is None:
        hit = load_embedding(path, name)
        with _lock:
            _cache[key] = hit
    return hit


def library() -> EmbeddingLibrary:
    return library_from_files(embedding_files(), load_cached)


def a1111_listing() -> dict:
    """GET /sdapi/v1/embeddings: {"loaded": {...}, "skipped": {...}} in A1111's shape.

    Every readable file is "loaded" (the pack loads each on first use, for
    whichever model encodes the prompt); a file that cannot be read (a .pt
    with pickled code, a foreign format) is "skipped".
    """
    loaded, skipped = {}, {}
    for listed, path in embedding_files().items():
        stem = os.path.splitext(os.path.basename(listed))[0]
        try:
            emb = load_cached(path, stem)
        except (ValueError, OSError, RuntimeError) as exc:
            log.warning("embedding %s skipped: %s", listed, exc)
            skipped[stem] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                             "vectors": None}
            continue
        loaded[stem] = {"step": emb.step, "sd_checkpoint": emb.sd_checkpoint,
                        "sd_checkpoint_name": emb.sd_checkpoint_name, "shape": emb.shape, "vectors": emb.count}
    return {"loaded": loaded, "skipped": skipped}
