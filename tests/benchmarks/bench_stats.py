"""Slope and intercept statistics for the side-by-side benchmark.

Why a slope: a prompt's time is about `fixed + steps * per_step`. Timing one
prompt at two step counts, right after each other, and taking the difference
cancels the fixed part (text encoding, VAE decode, saving, hooks) and gives
the per-step time; the intercept is the fixed part. Each repetition gives one
(slope, intercept) pair from its own two prompts, taken close together in
time, so slow drift of a shared machine moves both prompts alike and mostly
cancels. Medians over repetitions, with min-max and the inter-quartile range,
say how far the figures can be trusted.

Pure Python (no torch): `tests/unit/test_bench_stats.py` covers it.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def slope_intercept(low_steps: int, low_s: float, high_steps: int, high_s: float) -> tuple[float, float]:
    """(seconds per step, fixed seconds) of the line through two timed prompts."""
    if high_steps == low_steps:
        raise ValueError(f"the two step counts must differ, got {low_steps} twice")
    slope = (high_s - low_s) / (high_steps - low_steps)
    return slope, low_s - slope * low_steps


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of `values`."""
    data = sorted(values)
    if not data:
        return float("nan")
    position = (len(data) - 1) * q
    below = int(position)
    above = min(below + 1, len(data) - 1)
    return data[below] + (data[above] - data[below]) * (position - below)


def summary(values: Iterable[float]) -> dict:
    """Median, min, max, quartiles and count of the finite `values`."""
    data = [float(v) for v in values if v is not None and v == v]
    return {
        "median": quantile(data, 0.5),
        "min": min(data) if data else float("nan"),
        "max": max(data) if data else float("nan"),
        "q1": quantile(data, 0.25),
        "q3": quantile(data, 0.75),
        "n": len(data),
    }


def per_repetition(times: dict, low_steps: int, high_steps: int) -> list[dict]:
    """One {slope, intercept} per repetition from `times[steps] = [s of rep 0, rep 1, ...]`."""
    lows, highs = times[low_steps], times[high_steps]
    if len(lows) != len(highs):
        raise ValueError(f"{len(lows)} timings at {low_steps} steps but {len(highs)} at {high_steps}")
    out = []
    for low_s, high_s in zip(lows, highs):
        slope, intercept = slope_intercept(low_steps, low_s, high_steps, high_s)
        out.append({"slope": slope, "intercept": intercept})
    return out


def ratio_summary(ours: list[dict], theirs: list[dict], key: str) -> dict:
    """Summary of per-repetition ratios ours/theirs: the same repetition's two ways ran side by side."""
    return summary(a[key] / b[key] for a, b in zip(ours, theirs) if b[key])


def fmt_spread(stats: dict, digits: int = 3) -> str:
    """'median (min-max)' as printed in the report tables."""
    if stats["n"] == 0:
        return "-"
    return f"{stats['median']:.{digits}f} ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
