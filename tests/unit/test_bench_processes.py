"""The side-by-side benchmark's choice of one server or alternating servers (tests/benchmarks/bench_processes.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_processes  # noqa: E402


def test_sdxl_on_a_small_cpu_machine_alternates_and_fits():
    assert bench_processes.mode("sdxl", "cpu", 23.6) == "alternate"
    assert bench_processes.too_small("sdxl", "cpu", 23.6, "alternate") == ""


def test_sd15_on_the_same_machine_keeps_one_server():
    assert bench_processes.mode("sd15", "cpu", 23.6) == "one"


def test_a_large_cpu_machine_and_any_gpu_keep_one_server():
    assert bench_processes.mode("sdxl", "cpu", 64.0) == "one"
    assert bench_processes.mode("sd35m", "cuda", 16.0) == "one"


def test_an_explicit_request_wins_and_a_wrong_one_is_named():
    assert bench_processes.mode("sd15", "cpu", 23.6, "alternate") == "alternate"
    assert bench_processes.mode("sdxl", "cpu", 23.6, " One ") == "one"
    with pytest.raises(ValueError, match="DS_BENCH_PROCESSES.*'two'"):
        bench_processes.mode("sdxl", "cpu", 23.6, "two")


def test_a_machine_too_small_even_for_one_way_is_told_why():
    why = bench_processes.too_small("sdxl", "cpu", 15.5, "alternate")
    assert "20 GiB" in why and "15.5 GiB" in why and "one way per server" in why
    assert "48 GiB" in bench_processes.too_small("sdxl", "cpu", 23.6, "one")
