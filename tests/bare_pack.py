"""The pack's `nodes/` folder as a bare package, for tests of modules that need no ComfyUI.

`nodes/__init__` imports ComfyUI; the A1111 translator and the engine do
not, so their tests import them through this package without it.
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

PACKAGE = "ds_unit_a1111_pack"  # the name test_a1111_translate uses too: one copy of each module


def module(name: str):
    """`nodes.<name>` imported under the bare package."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(Path(__file__).resolve().parents[1] / "nodes")]
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.{name}")
