"""The AUTOMATIC1111 web UI API (/sdapi/v1), served by ComfyUI through the pack.

Each request becomes a graph of the pack's nodes queued on ComfyUI's own
queue; see translate.py (the graphs) and queue.py (queueing and waiting).
"""
from __future__ import annotations


def register(routes) -> None:
    from .routes import register as _register

    _register(routes)
