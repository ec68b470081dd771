"""Whether the side-by-side benchmark runs its three ways in one server or alternates servers.

One server for all three ways cancels drift best (test_sd15_side_by_side.py),
but it holds three copies of the weights: on a CPU in float32 that is about
40 GiB for SDXL and 37 GiB for SD3.5 medium without T5. Where that does not
fit, a fresh server per way and repetition holds one copy at a time. Pure
Python: tests/unit/test_bench_processes.py covers the choice.
"""
from __future__ import annotations

# GiB that all three ways' float32 copies need in one process on a CPU (measured peaks, rounded up;
# FLUX.1: float8 weights computed in float32, three times one way's peak).
ONE_PROCESS_GIB = {"sd15": 15, "sdxl": 40, "sd35m": 37, "flux": 56}
# Room left beside them for the OS, the test runner and the page cache.
MARGIN_GIB = 8
# GiB one way's server peaks at on a CPU (float32 weights, loading and working memory).
PER_WAY_GIB = {"sd15": 7, "sdxl": 20, "sd35m": 18, "flux": 20}
MODES = ("one", "alternate")


def mode(model: str, device: str, ram_gib: float, requested: str = "auto") -> str:
    """"one" (all ways in one server) or "alternate" (a server per way and repetition).

    An explicit request wins; otherwise a CPU run whose three float32 copies
    would not fit in this machine's RAM alternates. On CUDA the weights are
    float16 in GPU memory and one process holds them."""
    requested = (requested or "auto").strip().lower()
    if requested in MODES:
        return requested
    if requested != "auto":
        raise ValueError(f"DS_BENCH_PROCESSES must be one, alternate or auto, got {requested!r}")
    if device == "cpu" and ram_gib < ONE_PROCESS_GIB[model] + MARGIN_GIB:
        return "alternate"
    return "one"


def too_small(model: str, device: str, ram_gib: float, chosen: str) -> str:
    """Why this machine cannot run the benchmark in the chosen mode, or "" if it can."""
    if device != "cpu":
        return ""
    need = PER_WAY_GIB[model] if chosen == "alternate" else ONE_PROCESS_GIB[model] + MARGIN_GIB
    if ram_gib >= need:
        return ""
    how = "one way per server" if chosen == "alternate" else "all three ways in one server"
    return f"{model} on a CPU needs about {need} GiB with {how}; this machine has {ram_gib:.1f} GiB"
