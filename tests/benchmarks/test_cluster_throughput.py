"""Cluster throughput with 1 and then 2 workers on this machine (`make bench`).

The same batch of jobs (/prompt, tiny SD1.5, 128x128, 8 steps, distinct seeds)
goes through the gateway at once, first to a cluster of one ComfyUI worker,
then to two. Each ComfyUI runs one torch thread, the CPU stand-in for "one
worker per GPU": a worker owns one compute unit, and a second worker brings a
second one (on a 2-core machine, the second core). The figures (jobs per
minute, seconds per job, which worker ran what, the machine's load average)
are printed, never asserted; docs/benchmark.md has them and the per-GPU
scaling expected on paper.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.bench

JOBS = int(os.environ.get("DS_BENCH_CLUSTER_JOBS", "8"))
STEPS, SIZE = 8, 128


def _run_batch(cluster, seeds) -> tuple[float, dict]:
    from harness import prompts

    def one(seed):
        body = {"prompt": prompts.txt2img(seed=seed, steps=STEPS, size=SIZE, prefix="bench/c")}
        prompt_id = requests.post(cluster.url + "/prompt", json=body, timeout=60).json()["prompt_id"]
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            entry = requests.get(f"{cluster.url}/history/{prompt_id}", timeout=60).json()
            if entry:
                assert entry[prompt_id]["status"]["status_str"] == "success", entry
                return entry[prompt_id]["ds_cluster"]["worker"]
            time.sleep(0.1)
        raise AssertionError(f"job {prompt_id} not done")

    start = time.perf_counter()
    with ThreadPoolExecutor(len(seeds)) as pool:
        workers = list(pool.map(one, seeds))
    elapsed = time.perf_counter() - start
    return elapsed, {w: workers.count(w) for w in sorted(set(workers))}


def test_cluster_throughput_one_vs_two_workers(tmp_path):
    from harness.cluster import start_cluster

    figures = {}
    for n_workers in (1, 2):
        cluster = start_cluster(tmp_path / f"workers{n_workers}", n_workers=n_workers, threads_per_worker=1)
        try:
            _run_batch(cluster, list(range(1000, 1000 + 2 * n_workers)))  # every worker loads the model
            elapsed, spread = _run_batch(cluster, list(range(JOBS)))
        finally:
            cluster.stop()
        figures[n_workers] = elapsed
        print(f"\ncluster, {n_workers} worker(s), 1 torch thread each, load average {os.getloadavg()[0]:.1f}: "
              f"{JOBS} jobs ({SIZE}x{SIZE}, {STEPS} steps) in {elapsed:.1f} s = {60 * JOBS / elapsed:.1f} jobs/min, "
              f"{elapsed / JOBS:.2f} s/job; jobs per worker {spread}")
    print(f"2 workers / 1 worker throughput: {figures[1] / figures[2]:.2f}x on {os.cpu_count()} cores")
