"""The benchmark's slope/intercept arithmetic (tests/benchmarks/bench_stats.py).

The benchmark prints these figures and asserts nothing about speed, so the
arithmetic behind them is checked here on made-up timings.
"""
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_stats  # noqa: E402


def test_slope_and_intercept_of_an_exact_line():
    slope, intercept = bench_stats.slope_intercept(2, 2 * 0.5 + 3.0, 6, 6 * 0.5 + 3.0)
    assert slope == pytest.approx(0.5)
    assert intercept == pytest.approx(3.0)


def test_equal_step_counts_are_refused():
    with pytest.raises(ValueError, match="must differ"):
        bench_stats.slope_intercept(4, 1.0, 4, 2.0)


def test_per_repetition_pairs_each_repetition_s_own_prompts():
    times = {10: [2.0, 2.4, 2.2], 30: [4.0, 4.0, 5.2]}
    reps = bench_stats.per_repetition(times, 10, 30)
    assert [r["slope"] for r in reps] == pytest.approx([0.1, 0.08, 0.15])
    assert [r["intercept"] for r in reps] == pytest.approx([1.0, 1.6, 0.7])


def test_per_repetition_refuses_unpaired_timings():
    with pytest.raises(ValueError, match="2 timings at 10 steps but 1 at 30"):
        bench_stats.per_repetition({10: [1.0, 2.0], 30: [3.0]}, 10, 30)


def test_summary_median_spread_and_quartiles():
    stats = bench_stats.summary([5.0, 1.0, 3.0, 2.0, 4.0, float("nan"), None])
    assert stats["n"] == 5
    assert (stats["median"], stats["min"], stats["max"]) == (3.0, 1.0, 5.0)
    assert (stats["q1"], stats["q3"]) == (2.0, 4.0)
    assert bench_stats.quantile([1.0, 2.0], 0.5) == pytest.approx(1.5)


def test_empty_summary_prints_a_dash():
    stats = bench_stats.summary([])
    assert stats["n"] == 0 and math.isnan(stats["median"])
    assert bench_stats.fmt_spread(stats) == "-"


def test_ratios_pair_the_same_repetition():
    ours = [{"slope": 1.0}, {"slope": 3.0}]
    theirs = [{"slope": 2.0}, {"slope": 2.0}]
    stats = bench_stats.ratio_summary(ours, theirs, "slope")
    assert (stats["min"], stats["max"], stats["median"]) == (0.5, 1.5, 1.0)
    assert bench_stats.fmt_spread(stats, 2) == "1.00 (0.50-1.50)"
