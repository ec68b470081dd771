"""Pictures sent over HTTP, kept in ComfyUI's input folder for LoadImage to read.

The A1111 routes and the workflow endpoints both receive pictures as base64
and hand them to a LoadImage node, which only reads files from the input
folder. Files are named by their content (the caller picks the name), so the
same picture sent twice is stored once, and written through a temporary file
so a concurrent reader never sees half a picture.
"""
from __future__ import annotations

import os
import uuid


def store_input_file(name: str, data: bytes) -> str:
    """Write `data` as `name` (a '/'-separated path) under the input folder, unless it is there; returns `name`."""
    import folder_paths

    path = os.path.join(folder_paths.get_input_directory(), *name.split("/"))
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    return name
