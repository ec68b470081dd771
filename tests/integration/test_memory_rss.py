"""Memory honesty measured where a user sees it: the ComfyUI process's resident memory.

test_memory_release.py watches the pack's own report of what it holds; this
module watches the operating system's. The tiny models are too small for
that (a few MB), so it writes two mid-size SD1-architecture checkpoints
(UNet of 256/512 channels, about 260 MB each in float32) and starts a server
of its own, so that no other test's models share the process:

- after a prompt, RSS has grown by at least most of one checkpoint; after
  `POST /free` with unload, it returns near its level before loading;
- switching checkpoints A, B, A, B, A, B holds one at a time and does not
  grow memory run after run.

Margins are fractions of one checkpoint's size, and the measured figures are
in the assertion messages.
"""
from __future__ import annotations

import time

import pytest

from harness import models, prompts, server
from harness.client import ComfyClient

pytestmark = pytest.mark.integration

NAMES = ("ds_memory_a.safetensors", "ds_memory_b.safetensors")


def _mid_size_sd1(seed: int) -> dict:
    import tiny_models

    return tiny_models.tiny_sd1_components(seed, block_out_channels=(256, 512))


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory):
    import ldm_export

    root = tmp_path_factory.mktemp("comfyui_memory")
    base = server.prepare_base_dir(root / "base")
    models.write_tiny_models(base / "models")
    sizes = []
    for seed, name in enumerate(NAMES):
        path = ldm_export.save_sd1_single_file(_mid_size_sd1(seed), base / "models" / "checkpoints" / name)
        sizes.append(path.stat().st_size)
    running = server.start_server(base, root / "server.log")
    try:
        problems = server.pack_import_problems(running.log_text())
        assert not problems, "\n".join(problems)
        yield running, ComfyClient(running.url), min(sizes)
    finally:
        running.stop()


def _rss(running) -> int:
    import psutil

    return psutil.Process(running.process.pid).memory_info().rss


def _settled_rss(running, seconds: float = 1.0) -> int:
    """RSS after ComfyUI has finished its post-prompt clean-up."""
    time.sleep(seconds)
    return _rss(running)


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def _run(client, name: str, seed: int) -> None:
    result = client.run(prompts.txt2img(name, steps=1, seed=seed, prefix="test/memory"))
    assert result.status == "success", result.summary()


def test_free_returns_memory_and_switching_does_not_grow_it(memory_server):
    running, client, model_bytes = memory_server
    _run(client, models.SD15_CHECKPOINT, 1)  # imports and first-use costs, not under test
    client.free(unload_models=True, free_memory=True)
    before = _settled_rss(running)

    _run(client, NAMES[0], 2)
    loaded = _settled_rss(running)
    grown = loaded - before
    assert grown >= 0.6 * model_bytes, (
        f"RSS grew by {_mib(grown)} for a {_mib(model_bytes)} checkpoint: the measurement does not see the model"
    )

    assert client.free(unload_models=True, free_memory=True).status_code == 200
    freed = _settled_rss(running, 2.0)
    kept = freed - before
    assert kept <= 0.25 * model_bytes, (
        f"after POST /free RSS is {_mib(kept)} above its level before loading (before {_mib(before)}, "
        f"loaded {_mib(loaded)}, after free {_mib(freed)}; checkpoint {_mib(model_bytes)})"
    )

    after_run = []
    for i in range(6):
        _run(client, NAMES[i % 2], 10 + i)
        after_run.append(_settled_rss(running, 0.5))
    # measured: flat within 2 MiB once the loader collects dropped models
    # first; without that, A and B were both resident for a run or more
    two_at_once = max(after_run) - loaded
    assert two_at_once <= 0.25 * model_bytes, (
        f"switching checkpoints held more than one at a time: {[_mib(v) for v in after_run]} "
        f"(one loaded: {_mib(loaded)}; checkpoint {_mib(model_bytes)})"
    )
    growth = max(after_run[4:]) - max(after_run[:4])
    assert growth <= 0.25 * model_bytes, (
        f"RSS keeps growing while switching checkpoints: {[_mib(v) for v in after_run]} "
        f"(checkpoint {_mib(model_bytes)})"
    )
    print(f"\nRSS: before {_mib(before)}, loaded {_mib(loaded)}, after free {_mib(freed)}; "
          f"switching A/B: {[_mib(v) for v in after_run]}; checkpoint {_mib(model_bytes)}")
