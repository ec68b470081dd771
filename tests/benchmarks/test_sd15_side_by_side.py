"""SD1.5, SDXL and SD3.5 medium side by side: diffusers, this pack, ComfyUI native, in ONE ComfyUI process
(or, where RAM cannot hold three copies, in alternating servers: see below).

Why one process and interleaving: on a shared machine the speed of the same
process moves by 10-20 % from one minute to the next, more than the
differences measured. So one ComfyUI server runs all three ways on the same
full-size random-weight model (built once into ~/.cache/diffusers-studio/bench/):

1. diffusers' StableDiffusionPipeline (StableDiffusionXLPipeline for SDXL),
   called as is from a benchmark-only node (tests/benchmarks/ds_bench_diffusers),
   reading the same weights saved as a diffusers folder;
2. the pack's graph (DSLoadModel, DSTextEncode x2, EmptyLatentImage,
   DSSampler, DSVAEDecode);
3. ComfyUI's native graph (CheckpointLoaderSimple, CLIPTextEncode x2,
   EmptyLatentImage, KSampler, VAEDecode);

each ending in the same SaveImage. After one warm-up prompt per way (which
loads the model: reported as load time, resident memory), every repetition
runs each way at two step counts (the way order rotates with the repetition,
the step order alternates). A prompt's time is about fixed + steps x per-step,
so per repetition and way the slope between the two prompts is the per-step
time and the intercept the fixed cost per run (text encoding, VAE decode,
saving, the pack's or ComfyUI's own overhead). The server keeps node results
in an LRU cache (`--cache-lru 64`): ComfyUI's default cache drops the results
of nodes the current prompt lacks, so alternating graphs would reload every
model on every prompt. Every prompt has its own text
(a counter appended), so no way skips the text encoding from ComfyUI's cache.
Reported: medians over repetitions with min-max and IQR, the ratios per
repetition (pack/diffusers, pack/native), in wall seconds and in the server
process's CPU seconds (less sensitive to other processes on shared cores);
on CUDA also each prompt's peak memory above what was allocated before it
and each way's resident weights. Printed and written to last_run*.md/.json
in the cache; nothing is asserted.

SD3.5 medium (DS_BENCH_MODEL=sd35m, dit_bench_model.py): the same three
ways on a full-size random SD3.5-medium without T5: StableDiffusion3Pipeline,
the pack's graph and CheckpointLoaderSimple + KSampler, both on
EmptySD3LatentImage. DS_BENCH_DIT_LAYERS cuts the transformer to a few
blocks (a rehearsal of the harness, not figures).

FLUX.1 (DS_BENCH_MODEL=flux, flux_bench_model.py): a full-size FLUX.1
schnell whose transformer and T5 are stored in float8, as split files:
FluxPipeline with diffusers' layerwise casting (ds_bench_diffusers/flux_fp8.py),
the pack's DSLoadSplitModel (float8 kept as stored) and ComfyUI's UNETLoader +
DualCLIPLoader + VAELoader, CFG 1 (schnell is distilled), T5 at 256 tokens in
all three, computed in float32 on a CPU.

Alternating processes (DS_BENCH_PROCESSES=alternate; chosen by itself where
three float32 copies would not fit: SDXL needs about 40 GiB in one process,
SD3.5 medium about 37): each way runs in a ComfyUI server of its own, started
afresh for every repetition (the way order rotating as above), which loads
its model in a warm-up prompt of one step and then times the two step
counts. Only one copy of the weights is resident at a time (about 13-19 GiB),
and each way's peak RSS is its own server's. Drift between the servers of
one repetition is not cancelled as well as inside one process, which the
spread over repetitions shows.

Settings (env): DS_BENCH_MODEL sd15 (default), sdxl, sd35m, flux or all. DS_BENCH_STEPS
"low,high" (CPU 2,4; CUDA 10,30), DS_BENCH_REPS (CPU 3, CUDA 5), DS_BENCH_SIZE
(SD1.5 256 on a CPU, 512 on CUDA; SDXL 512 / 1024); float32 on a CPU, float16
on CUDA. DS_BENCH_EXTRAS (none by default; all or a list of lora, cn1, cn2, regional,
inpaint, ipa, fill) adds the pack's and ComfyUI's adapter graphs (each model takes
those it has files for: MODEL_DEFAULTS), in the same server after the main
table (with alternating servers: a server per adapter and way). Each adapter
is timed against the plain graph in the same server, the two interleaved,
DS_BENCH_EXTRA_REPS times (default 1): the adapter's per-step cost is the
difference of the two slopes per repetition, so a server's drift cancels.
FLUX.1 Fill replaces the model, so its servers run the Fill graph alone (its
row compares the ways; the plain model is the main table's).
DS_BENCH_REPS=0 skips the main table (the adapters alone).
DS_BENCH_PROCESSES one, alternate or auto (the default).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DS_BENCH_CACHE", "~/.cache/diffusers-studio/bench")).expanduser()
WORKER = HERE / "sd15_worker.py"
BENCH_NODE = "ds_bench_diffusers"
RUN_TIMEOUT = 1800.0
WAYS = ("diffusers", "pack", "native")

# Per model: (size, (low, high) steps, repetitions) on CUDA and on a CPU.
MODEL_DEFAULTS = {
    "sd15": {"cuda": (512, (10, 30), 5), "cpu": (256, (2, 4), 3), "extras": ("lora", "cn1", "cn2")},
    "sdxl": {"cuda": (1024, (10, 30), 5), "cpu": (512, (1, 3), 2), "extras": ()},
    "sd35m": {"cuda": (1024, (10, 30), 3), "cpu": (256, (1, 2), 2),
              "extras": ("cn1", "cn2", "regional", "inpaint", "ipa")},
    "flux": {"cuda": (1024, (4, 12), 3), "cpu": (256, (1, 2), 2),
             "extras": ("lora", "regional", "inpaint", "fill")},
}
# Per adapter: its label in the report, the graph flags that add it, and the ways that have it (ComfyUI has no
# native IP-Adapter node). The Fill model replaces the model, so it has no plain graph in its server (NO_PLAIN):
# its row compares the ways, against the main table's plain model.
NO_PLAIN = {"fill"}
EXTRAS = {
    "lora": ("LoRA (rank 16)", {"lora": True}, ("pack", "native")),
    "cn1": ("1 ControlNet", {"controlnets": 1}, ("pack", "native")),
    "cn2": ("2 ControlNets", {"controlnets": 2}, ("pack", "native")),
    "regional": ("1 regional prompt (left half)", {"regional": True}, ("pack", "native")),
    "inpaint": ("inpaint, masked (left half)", {"inpaint": True}, ("pack", "native")),
    "ipa": ("IP-Adapter (weight 0.8)", {"ip_adapter": True}, ("pack",)),
    "fill": ("FLUX.1 Fill (left half)", {"fill": True}, ("pack", "native")),
}


def _models_selected() -> list:
    value = os.environ.get("DS_BENCH_MODEL", "sd15").strip().lower()
    if value in ("all", "both"):
        return list(MODEL_DEFAULTS)
    models = [key.strip() for key in value.split(",") if key.strip() in MODEL_DEFAULTS]
    return models or ["sd15"]


def _extras_selected(value: str) -> list:
    value = value.strip().lower()
    if value in ("", "0", "none", "no"):
        return []
    if value in ("1", "all", "yes"):
        return list(EXTRAS)
    return [key.strip() for key in value.split(",") if key.strip() in EXTRAS]


def _settings(model: str) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    defaults = MODEL_DEFAULTS[model]
    size, steps, reps = defaults["cuda" if cuda else "cpu"]
    if os.environ.get("DS_BENCH_STEPS"):
        steps = tuple(int(s) for s in os.environ["DS_BENCH_STEPS"].split(","))
    if len(steps) != 2 or steps[0] == steps[1]:
        raise ValueError(f"DS_BENCH_STEPS must be two different step counts like '10,30', got {steps}")
    return {
        "model": model,
        "device": "cuda" if cuda else "cpu",
        "dtype": "float16" if cuda else "float32",
        "size": int(os.environ.get("DS_BENCH_SIZE", size)),
        "steps": sorted(steps),
        "reps": int(os.environ.get("DS_BENCH_REPS", reps)),
        "extras": [key for key in _extras_selected(os.environ.get("DS_BENCH_EXTRAS", "none"))
                   if key in defaults["extras"]],
        "extra_reps": max(1, int(os.environ.get("DS_BENCH_EXTRA_REPS", 1))),
        "torch": torch.__version__,
    }


def _worker(*args: str) -> dict:
    """Runs sd15_worker.py with `args` in a process of its own and returns its RESULT record."""
    import subprocess

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DIFFUSERS_OFFLINE="1")
    done = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, env=env,
                          timeout=3600)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"{args[0]} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")


def _ensure_model(model: str = "sd15") -> dict:
    import sd15_worker

    spec = sd15_worker.MODELS[model]
    if sd15_worker.is_complete(CACHE, model):
        info = json.loads((CACHE / spec["done"]).read_text())
        info["reused"] = True
        return info
    print(f"\n[bench] building the random full-size {spec['label']} model into {CACHE} (once)", flush=True)
    info = _worker("generate", str(CACHE), model)
    info["reused"] = False
    return info


def _prepare_base(workdir: Path, names: dict) -> Path:
    from harness import server

    base = server.prepare_base_dir(workdir / "base")
    links = [("checkpoints", names.get("checkpoint")), ("diffusers", names["folder"]),
             ("loras", names.get("lora")), ("controlnet", names.get("controlnet")),
             ("diffusion_models", names.get("transformer")), ("diffusion_models", names.get("fill")),
             ("text_encoders", names.get("t5")),
             ("ipadapter", names.get("ip_adapter")), ("clip_vision", names.get("clip_vision")),
             ("text_encoders", names.get("clip_l")), ("vae", names.get("vae"))]
    for folder, name in links:
        if name and (CACHE / name).exists():
            (base / "models" / folder).mkdir(parents=True, exist_ok=True)
            link = base / "models" / folder / name
            if not link.exists():
                link.symlink_to(CACHE / name)
    node_link = base / "custom_nodes" / BENCH_NODE
    if not node_link.exists():
        node_link.symlink_to(HERE / BENCH_NODE, target_is_directory=True)
    return base


class Bench:
    """One server, three ways; times each prompt from the websocket messages."""

    def __init__(self, running, settings: dict, names: dict, counter: int = 0):
        import psutil

        from harness.client import ComfyClient

        self.client = ComfyClient(running.url, timeout=120)
        self.process = psutil.Process(running.process.pid)
        self.settings = settings
        self.names = names
        self.counter = counter

    def graph(self, way: str, steps: int, seed: int, **extra) -> dict:
        import bench_graphs
        import sd15_worker as w

        self.counter += 1
        prompt = f"{w.PROMPT}, take {self.counter}"  # unique: every prompt encodes its text
        size = self.settings["size"]
        if way == "diffusers":
            return bench_graphs.diffusers_graph(self.names, size, steps, seed, prompt,
                                                kind=self.settings["model"], dtype=self.settings["dtype"])
        build = bench_graphs.pack_graph if way == "pack" else bench_graphs.native_graph
        return build(self.names, size, steps, seed, prompt, **extra)

    def memory(self, reset: bool = False) -> dict:
        if reset:
            return self.client.post("/ds_bench/reset_peak").json()
        return self.client.get("/ds_bench/memory").json()

    def run(self, way: str, steps: int, seed: int, **extra) -> dict:
        graph = self.graph(way, steps, seed, **extra)
        before = self.memory(reset=True)
        rss_before = self.process.memory_info().rss
        cpu0 = self.process.cpu_times()
        stamps = []
        result = self.client.run(graph, timeout=RUN_TIMEOUT,
                                 on_message=lambda m, _r: stamps.append((time.perf_counter(), m)))
        cpu1 = self.process.cpu_times()
        if result.status != "success":
            raise AssertionError(f"{way} prompt failed:\n{result.summary()}")
        after = self.memory()

        def first(kind, node="*"):
            return next((t for t, m in stamps if m.get("type") == kind
                         and (node == "*" or (m.get("data") or {}).get("node") == node)), None)

        start = first("execution_start") or stamps[0][0]
        end = first("executing", None)
        starts = [(t, m["data"]["node"]) for t, m in stamps if m.get("type") == "executing" and m["data"].get("node")]
        node_s = {node: t1 - t0 for (t0, node), (t1, _n) in zip(starts, starts[1:] + [(end, None)])}
        record = {
            "way": way, "steps": steps, "seed": seed, "run_s": end - start, "node_s": node_s,
            "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "rss_before": rss_before, "rss_after": self.process.memory_info().rss,
            "cached": result.cached_nodes(),
            "ui": {k: v for k, v in result.outputs.items() if "ds_bench" in v},
        }
        if before.get("cuda"):
            record.update(alloc_before=before["allocated"], alloc_after=after["allocated"],
                          peak=after["peak_allocated"], peak_reserved=after["peak_reserved"])
        return record


def _rotation(rep: int, low: int, high: int) -> tuple:
    """The way order (rotating with the repetition) and step order (alternating) of repetition `rep`."""
    return WAYS[rep % 3:] + WAYS[:rep % 3], ((low, high) if rep % 2 == 0 else (high, low))


def _measure(bench: Bench, settings: dict) -> dict:
    low, high = settings["steps"]
    warmup = {}
    for way in WAYS:  # loads each model; the first CUDA kernels and allocator growth land here too
        warmup[way] = bench.run(way, low, 1)
        print(f"[bench] warm-up {way}: {warmup[way]['run_s']:.2f} s", flush=True)
    prompts = []
    for rep in range(settings["reps"]):
        order, step_order = _rotation(rep, low, high)
        for way in order:
            for steps in step_order:
                record = bench.run(way, steps, 1000 + rep)
                record["rep"] = rep
                prompts.append(record)
                print(f"[bench] rep {rep} {way} {steps} steps: {record['run_s']:.3f} s, cpu {record['cpu_s']:.2f} s, "
                      f"peak above start {(record.get('peak', 0) - record.get('alloc_before', 0)) / 2**30:.2f} GiB",
                      flush=True)
    return {"warmup": warmup, "prompts": prompts}


def _start(base: Path, log: Path, settings: dict):
    """A ComfyUI server for the benchmark (previews off, LRU cache), checked to have imported the pack."""
    from harness import server

    start = time.perf_counter()
    running = server.start_server(
        base, log, timeout=300, cpu=settings["device"] == "cpu",
        extra_args=["--preview-method", "none", "--cache-lru", "64",
                    "--whitelist-custom-nodes", server.PACK_NAME, BENCH_NODE],
    )
    startup_s = time.perf_counter() - start
    problems = server.pack_import_problems(running.log_text())
    if problems:
        running.stop()
        raise AssertionError("the pack did not import:\n" + "\n".join(problems))
    return running, startup_s


def _keep_log(running, name: str) -> None:
    if os.environ.get("DS_BENCH_OUT"):  # the device script brings the server's log back
        Path(os.environ["DS_BENCH_OUT"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["DS_BENCH_OUT"]) / f"server_{name}.log").write_text(running.log_text()[-2_000_000:])


def _measure_alternating(base: Path, workdir: Path, settings: dict, names: dict) -> dict:
    """Each way in a server of its own, started afresh per repetition: one model copy resident at a time."""
    import bench_report

    low, high = settings["steps"]
    warmup, prompts, peaks, startups = {}, [], {}, []
    for rep in range(settings["reps"]):
        order, step_order = _rotation(rep, low, high)
        for way in order:
            running, startup_s = _start(base, workdir / f"server_{rep}_{way}.log", settings)
            startups.append(startup_s)
            try:
                bench = Bench(running, settings, names, counter=100 * len(startups))
                first = bench.run(way, 1, 1)  # loads the model (and the first allocations)
                warmup.setdefault(way, first)
                print(f"[bench] rep {rep} {way}: server {startup_s:.1f} s, warm-up {first['run_s']:.2f} s", flush=True)
                for steps in step_order:
                    record = bench.run(way, steps, 1000 + rep)
                    record["rep"] = rep
                    prompts.append(record)
                    print(f"[bench] rep {rep} {way} {steps} steps: {record['run_s']:.3f} s, "
                          f"cpu {record['cpu_s']:.2f} s", flush=True)
                peaks[way] = max(peaks.get(way, 0), bench_report.vm_hwm(running.process.pid))
            finally:
                running.stop()
                _keep_log(running, f"{settings['model']}_{rep}_{way}")
    return {"warmup": warmup, "prompts": prompts, "peak_rss_by_way": peaks, "processes": "alternate",
            "startup_s": sorted(startups)[len(startups) // 2] if startups else None, "extras": [],
            "peak_rss": max(peaks.values(), default=0)}


def _time_extra(bench: Bench, way: str, key: str, settings: dict, warmup_steps: int) -> list:
    """One way's adapter graph against its plain graph in the same server: a warm-up prompt each (loading the
    model, then the adapter), then per repetition both graphs at both step counts, the orders alternating."""
    label, kwargs, _ways = EXTRAS[key]
    variants = (("adapter", kwargs),) if key in NO_PLAIN else (("plain", {}), ("adapter", kwargs))
    for _variant, flags in variants:
        bench.run(way, warmup_steps, 1, **flags)
    records = []
    for rep in range(settings["extra_reps"]):
        for variant, flags in variants if rep % 2 == 0 else variants[::-1]:
            for steps in settings["steps"] if rep % 2 == 0 else settings["steps"][::-1]:
                record = bench.run(way, steps, 2000 + rep, **flags)
                record.update(rep=rep, extra=label, variant=variant)
                records.append(record)
                print(f"[bench] {label} {way} rep {rep} {variant} {steps} steps: {record['run_s']:.3f} s", flush=True)
    return records


def _measure_extras(bench: Bench, settings: dict) -> list:
    return [record for key in settings["extras"] for way in EXTRAS[key][2]
            for record in _time_extra(bench, way, key, settings, settings["steps"][0])]


def _measure_extras_alternating(base: Path, workdir: Path, settings: dict, names: dict) -> tuple:
    """The adapter graphs with a server per adapter and way: 1-step warm-ups load both, then the timed prompts."""
    import bench_report

    records, peaks = [], {}
    for key in settings["extras"]:
        for way in EXTRAS[key][2]:
            running, _startup = _start(base, workdir / f"server_{key}_{way}.log", settings)
            try:
                bench = Bench(running, settings, names, counter=10_000 + len(records))
                records += _time_extra(bench, way, key, settings, 1)
                peaks[f"{EXTRAS[key][0]} {way}"] = bench_report.vm_hwm(running.process.pid)
            finally:
                running.stop()
                _keep_log(running, f"{settings['model']}_{key}_{way}")
    return records, peaks


def _machine() -> dict:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
    machine = {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": mem_kib / 1024**2,
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "loadavg": os.getloadavg()}
    try:
        import torch

        if torch.cuda.is_available():
            machine["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - the report just leaves the GPU out
        pass
    return machine


def _versions() -> dict:
    import diffusers
    import torch
    import transformers

    comfy = "unknown"
    root = os.environ.get("COMFYUI_PATH")
    if root and (Path(root) / "comfyui_version.py").is_file():
        comfy = (Path(root) / "comfyui_version.py").read_text().split("__version__ =", 1)[-1].strip().strip('"')
    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "comfyui": comfy}


@pytest.mark.parametrize("model", _models_selected())
def test_side_by_side(tmp_path, model):
    if not os.environ.get("COMFYUI_PATH"):
        pytest.skip("COMFYUI_PATH is not set: run with `make bench`")
    sys.path.insert(0, str(HERE))
    import bench_graphs
    import bench_processes
    import bench_report
    import sd15_worker as w

    settings = _settings(model)
    machine_start = _machine()
    mode = bench_processes.mode(model, settings["device"], machine_start["ram_gib"],
                                os.environ.get("DS_BENCH_PROCESSES", "auto"))
    settings["processes"] = mode
    too_small = bench_processes.too_small(model, settings["device"], machine_start["ram_gib"], mode)
    if too_small and not os.environ.get("DS_BENCH_DIT_LAYERS"):
        pytest.skip(too_small)
    spec = w.MODELS[model]
    model_info = _ensure_model(model)
    if "fill" in settings["extras"]:
        model_info["fill"] = _worker("fill", str(CACHE))
    model_info["label"] = spec["label"]
    names = {key: spec.get(key) for key in ("checkpoint", "folder", "lora", "controlnet", "latent", "transformer",
                                            "t5", "clip_l", "vae", "cfg", "ip_adapter", "clip_vision", "fill")}
    settings["cfg"] = names["cfg"] or bench_graphs.CFG
    print(f"\n[bench] model {'reused' if model_info['reused'] else 'built'} in {CACHE}; settings {settings}", flush=True)

    base = _prepare_base(tmp_path, names)
    if mode == "alternate":
        data = _measure_alternating(base, tmp_path, settings, names)
        data["extras"], extra_peaks = _measure_extras_alternating(base, tmp_path, settings, names)
        data["peak_rss_extras"] = extra_peaks
    else:
        running, startup_s = _start(base, tmp_path / "server.log", settings)
        try:
            bench = Bench(running, settings, names)
            data = _measure(bench, settings) if settings["reps"] else {"warmup": {}, "prompts": []}
            data["extras"] = _measure_extras(bench, settings) if settings["extras"] else []
            data["peak_rss"] = bench_report.vm_hwm(running.process.pid)
            data["startup_s"] = startup_s
        finally:
            running.stop()
            _keep_log(running, model)
    data.update(settings=settings, model=model_info, machine=_machine(), machine_start=machine_start,
                versions=_versions())
    report = bench_report.render(data)
    print("\n" + report, flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = "last_run" if model == "sd15" else f"last_run_{model}"
    (CACHE / f"{stem}.md").write_text(report)
    (CACHE / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    out = os.environ.get("DS_BENCH_OUT")  # the device script collects the reports here
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{stem}.md").write_text(report)
        (Path(out) / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
