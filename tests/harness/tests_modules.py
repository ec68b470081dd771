"""The tests folder's own modules (tiny_models, ldm_export) for the harness.

The harness is also imported by scripts outside pytest (`make run`, `make
thumbnails`), where `tests/` is not on sys.path; every plug-in goes through
here instead of repeating the path set-up.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent


def tests_module(name: str):
    """Import `tests/<name>.py`."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return importlib.import_module(name)


def write_single_file(models_dir: Path, file_name: str, save: str, components: dict) -> list[Path]:
    """`models/checkpoints/<file_name>` written by ldm_export's `save` function from `components`."""
    checkpoints = Path(models_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    path = checkpoints / file_name
    getattr(tests_module("ldm_export"), save)(components, path)
    return [path]
