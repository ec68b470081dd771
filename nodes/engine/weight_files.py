"""Opening a pickled weight file (.pt, .pth, .bin, .ckpt) without running its code.

Many community files (textual-inversion embeddings, LoRAs, ControlNets, IP-Adapters,
face models) are still released as pickles. A pickle can carry code that runs on
load, so the pack only ever opens one with `torch.load(weights_only=True)`, which
rebuilds tensors and plain containers and refuses anything else. Every loader goes
through `load_plain_tensors` so the refusal reads the same everywhere: it names the
file, says why it was refused, and says what to do instead.
"""
from __future__ import annotations

from typing import Any, Type

import torch


def refusal_message(subject: str, exc: BaseException) -> str:
    """The one message for a pickle that `weights_only=True` would not open.

    `subject` names the input and file as the caller's user sees them
    ("lora_name: 'x.pt'", "ControlNet 'y.pth'").
    """
    first_line = (str(exc).splitlines() or [""])[0][:200]
    return (
        f"{subject} was refused: torch.load(weights_only=True) could not read it as plain tensors "
        f"({type(exc).__name__}: {first_line}). Either it is a pickle that carries code, which the pack "
        "never runs, or the file is damaged. Use a .safetensors version of it (or convert a file you trust)."
    )


def load_plain_tensors(path: str, subject: str, error: Type[Exception] = ValueError) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; `error(refusal_message(...))` when it refuses.

    Every exception is caught: torch raises UnpicklingError for code, but RuntimeError,
    EOFError and others for truncated or foreign files, and each deserves the same
    clear answer rather than a traceback.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise error(refusal_message(subject, exc)) from None


__all__ = ["load_plain_tensors", "refusal_message"]
