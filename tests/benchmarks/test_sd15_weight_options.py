"""What DSModelOptions and DSLoadLoRA cost and save on a full-size SD1.5 UNet, measured in one process.

The side-by-side benchmark (test_sd15_side_by_side.py) compares whole graphs
across processes; this one isolates the model options, so every row runs the
same engine call (`sampling.sample`) in the same process on the same loaded
checkpoint (the benchmark's random-weight SD1.5, built by the side-by-side
benchmark's worker if missing; this file sorts after that one, so its
process's memory does not weigh on that one's servers), at the same size, steps, sampler, cfg and seed:

- weight storage: default, float8_e4m3fn, int8 (torchao), NF4 (bitsandbytes):
  the UNet's stored bytes (`parameter_bytes`: inner tensors of quantized
  weights and their scales included), seconds per step, and how far the final
  latents move from the default run (max |difference| / max |latent|);
- LoRA (the benchmark's rank-16 LoRA): seconds per step with the LoRA merged
  for the run (the merge and restore fall outside the step intervals; the run
  totals show them);
- torch.compile (regional, the UNet's transformer blocks): the first run,
  which compiles, then the steady seconds per step of a second run.

A warm-up run comes first (a process's first run is slower: allocator and
thread-pool start-up). Seconds per step are the mean interval between
consecutive step callbacks (the first step, which includes per-run set-up, is
left out); CPU seconds per
step (process user + system time over the same span) are printed beside them,
since other processes on the machine inflate wall time but hardly CPU time.
Nothing is asserted about speed. DS_BENCH_COMPILE=0 leaves out the compile
rows (on 2 CPU cores compiling takes minutes).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

CACHE = Path(os.environ.get("DS_BENCH_CACHE", "~/.cache/diffusers-studio/bench")).expanduser()
SEED = 1234
CFG = 7.0


def _settings() -> dict:
    import torch

    gpu = torch.cuda.is_available()
    return {
        "device": "cuda" if gpu else "cpu",
        "dtype": "float16" if gpu else "float32",
        "size": int(os.environ.get("DS_BENCH_SIZE", 512 if gpu else 256)),
        "steps": int(os.environ.get("DS_BENCH_STEPS", 20 if gpu else 4)),
        "compile": os.environ.get("DS_BENCH_COMPILE", "1") != "0",
    }


class _StepClock:
    """Wall and CPU time at each step callback."""

    def __init__(self, sync):
        self.sync = sync
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, step, total, x0) -> None:
        self.sync()
        times = os.times()
        self.wall.append(time.perf_counter())
        self.cpu.append(times.user + times.system)

    def per_step(self) -> tuple[float, float]:
        if len(self.wall) < 2:
            return float("nan"), float("nan")
        n = len(self.wall) - 1
        return (self.wall[-1] - self.wall[0]) / n, (self.cpu[-1] - self.cpu[0]) / n


def _run(model, positive, negative, settings, sync) -> dict:
    import torch

    from diffusers_studio.nodes.engine.sampling import sample

    latent_side = settings["size"] // 8
    clock = _StepClock(sync)
    start = time.perf_counter()
    out = sample(model, positive, negative, {"samples": torch.zeros(1, 4, latent_side, latent_side)},
                 seed=SEED, steps=settings["steps"], cfg=CFG, sampler_name="Euler", device=settings["device"],
                 on_step=clock)["samples"]
    sync()
    wall, cpu = clock.per_step()
    return {"total": time.perf_counter() - start, "s_step": wall, "cpu_step": cpu, "latents": out.float().cpu()}


def _gib(n: int) -> str:
    return f"{n / 2**30:.3f}"


def test_model_options_cost_and_saving():
    import torch

    from diffusers_studio.nodes.engine import lora as lora_engine
    from diffusers_studio.nodes.engine import model_options as mo
    from diffusers_studio.nodes.engine.loading import load_checkpoint
    from diffusers_studio.nodes.engine.text_encoding import encode_prompt
    import sd15_worker
    from test_sd15_side_by_side import _ensure_model, _machine, _versions
    from tiny_models import tokenizer_dir

    settings = _settings()
    _ensure_model()
    device = torch.device(settings["device"])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model, text_encoder, _vae = load_checkpoint(CACHE / sd15_worker.CHECKPOINT, dtype=settings["dtype"],
                                                tokenizer_dir=tokenizer_dir(), device=device, use_cache=False)
    positive = encode_prompt(text_encoder, "a photograph of an astronaut riding a horse on the moon")
    negative = encode_prompt(text_encoder, "blurry, low quality")
    base_bytes = mo.parameter_bytes(model.unet)

    _run(model, positive, negative, settings, sync)  # warm-up: the process's first run is slower
    rows = []
    baseline = None
    for storage in [mo.STORAGE_DEFAULT, mo.STORAGE_FP8_E4M3, mo.STORAGE_INT8, mo.STORAGE_NF4]:
        started = time.perf_counter()
        try:
            options = mo.apply_options(model, weight_storage=storage)
        except ValueError as exc:  # a backend that is not installed: say so in the table
            rows.append({"name": storage, "note": str(exc)})
            continue
        prepare = time.perf_counter() - started
        if device.type == "cuda":
            options.unet.to(device)
        result = _run(options, positive, negative, settings, sync)
        if baseline is None:
            baseline = result
        moved = (result["latents"] - baseline["latents"]).abs().max() / baseline["latents"].abs().max()
        rows.append({"name": storage, "bytes": mo.parameter_bytes(options.unet), "prepare": prepare,
                     "moved": float(moved), **result})
        mo.clear_stored_copies()
        del options

    lora_row = None
    lora_path = CACHE / sd15_worker.LORA
    if lora_path.exists():
        loaded = lora_engine.load_lora(str(lora_path))
        with_lora, _ = lora_engine.apply_lora(model, None, loaded, 1.0, 0.0)
        plain_again = _run(model, positive, negative, settings, sync)
        lora_result = _run(with_lora, positive, negative, settings, sync)
        lora_row = {"plain": plain_again, "lora": lora_result}

    compile_rows = None
    if settings["compile"]:
        compiled = mo.apply_options(model, compile_unet=True)
        first = _run(compiled, positive, negative, settings, sync)
        second = _run(compiled, positive, negative, settings, sync)
        plain = _run(model, positive, negative, settings, sync)
        moved = (second["latents"] - plain["latents"]).abs().max() / plain["latents"].abs().max()
        compile_rows = {"first": first, "second": second, "plain": plain, "moved": float(moved)}

    machine, versions = _machine(), _versions()
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']:.1f} GiB RAM; {machine['date']}; "
        f"load average at the end {', '.join(f'{v:.1f}' for v in machine['loadavg'])}.",
        "Software: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"Work: SD1.5 architecture, random weights, {settings['size']}x{settings['size']}, {settings['steps']} "
        f"steps, Euler, cfg {CFG}, {settings['dtype']} compute on {settings['device']}, one process "
        "(engine `sample`, no server).",
        "",
        "| weight storage | UNet stored GiB | x default | prepare s | s/step | CPU s/step | x default (CPU) "
        "| latents moved |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "note" in row:
            lines.append(f"| {row['name']} | - | - | - | - | - | - | {row['note']} |")
            continue
        lines.append(
            f"| {row['name']} | {_gib(row['bytes'])} | {row['bytes'] / base_bytes:.3f} | {row['prepare']:.1f} "
            f"| {row['s_step']:.3f} | {row['cpu_step']:.3f} | {row['cpu_step'] / baseline['cpu_step']:.3f} "
            f"| {row['moved']:.2%} |"
        )
    if lora_row:
        plain, lora = lora_row["plain"], lora_row["lora"]
        lines += [
            "",
            "| LoRA (rank 16, strength 1, merged per run) | s/step | CPU s/step | x plain (CPU) | run total s |",
            "|---|---:|---:|---:|---:|",
            f"| plain | {plain['s_step']:.3f} | {plain['cpu_step']:.3f} | 1.000 | {plain['total']:.2f} |",
            f"| with LoRA | {lora['s_step']:.3f} | {lora['cpu_step']:.3f} | {lora['cpu_step'] / plain['cpu_step']:.3f} "
            f"| {lora['total']:.2f} |",
        ]
    if compile_rows:
        first, second, plain = compile_rows["first"], compile_rows["second"], compile_rows["plain"]
        lines += [
            "",
            "| torch.compile (regional) | run total s | s/step | CPU s/step | x eager (CPU) |",
            "|---|---:|---:|---:|---:|",
            f"| eager | {plain['total']:.2f} | {plain['s_step']:.3f} | {plain['cpu_step']:.3f} | 1.000 |",
            f"| compiled, first run (compiles) | {first['total']:.2f} | {first['s_step']:.3f} | "
            f"{first['cpu_step']:.3f} | {first['cpu_step'] / plain['cpu_step']:.3f} |",
            f"| compiled, second run | {second['total']:.2f} | {second['s_step']:.3f} | {second['cpu_step']:.3f} "
            f"| {second['cpu_step'] / plain['cpu_step']:.3f} |",
            f"Compiled vs eager latents: max |difference| / max |latent| = {compile_rows['moved']:.2e}.",
        ]
    # let the models go before the next benchmark (its servers and its diffusers
    # process need the memory; the side-by-side one runs first by file name)
    del model, text_encoder, _vae, positive, negative
    mo.clear_stored_copies()
    import gc

    gc.collect()
    report = "\n".join(lines)
    print("\n" + report)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "options_last_run.md").write_text(report + "\n")
