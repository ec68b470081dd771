"""Benchmarks: collected by every run, executed only by `make bench`.

`make bench` selects them with `-m bench`; DS_BENCH=1 runs them too. Any other
run (`make test`, `pytest tests`) collects and skips them, so collection must
stay cheap: nothing heavy is imported at module level here or in the
benchmark modules (torch, diffusers and the server start inside the tests).
Figures are printed (run with `-s`), never asserted.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: a benchmark; runs only with -m bench (make bench) or DS_BENCH=1")


def _bench_selected(config) -> bool:
    if os.environ.get("DS_BENCH") == "1":
        return True
    markexpr = config.getoption("markexpr", "") or ""
    return "bench" in markexpr and "not bench" not in markexpr


def pytest_collection_modifyitems(config, items):
    if _bench_selected(config):
        return
    skip = pytest.mark.skip(reason="benchmark: run with `make bench` (-m bench) or DS_BENCH=1")
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if BENCH_DIR in path.parents:
            item.add_marker(skip)
