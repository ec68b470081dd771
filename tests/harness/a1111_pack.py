"""The pack's `nodes/` folder as a bare package, for the A1111 translation's unit tests.

The pack's own `__init__` needs ComfyUI; `a1111.translate` and its helpers do
not, so the unit tests load them without a ComfyUI tree.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
PKG = "ds_unit_a1111_pack"


def a1111_module(name: str):
    """`nodes.a1111.<name>` of the checkout, imported through the bare package."""
    if PKG not in sys.modules:
        package = types.ModuleType(PKG)
        package.__path__ = [str(_ROOT / "nodes")]
        sys.modules[PKG] = package
    return importlib.import_module(f"{PKG}.a1111.{name}")
