"""Shared test set-up: the pack importable as `diffusers_studio`, offline hubs.

ComfyUI imports a custom-node folder as a package, so the pack's modules use
relative imports. The tests register the checkout under the package name
`diffusers_studio` (whatever the clone's folder is called) so that
`diffusers_studio.nodes.engine...` imports work the same way.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
PACKAGE = "diffusers_studio"

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


def _register_pack() -> None:
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        PACKAGE, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)


_register_pack()


@pytest.fixture(scope="session")
def make_run_server(tmp_path_factory):
    """ComfyUI started by `make run`'s own script (harness/make_run.py), once per session.

    The README examples (tests/integration) and the newcomer's first screen
    (tests/browser) both need the server a user gets from `make run`; starting
    it writes the demo models and takes a minute or more, so they share one.
    """
    from harness import make_run

    root = tmp_path_factory.mktemp("make_run")
    running = make_run.start(root / "base", root / "make_run.log")
    try:
        yield running
    finally:
        running.stop()
