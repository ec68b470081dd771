"""SD1.5 (and SDXL) side by side: diffusers directly, this pack's graph, ComfyUI's native graph.

One full-size SD1.5-architecture model with random weights (float16 on disk,
built once into ~/.cache/diffusers-studio/bench/ and reused) is run, in one
pytest run and at the same size, steps, sampler (Euler, normal schedule) and
cfg, by:

1. diffusers' StableDiffusionPipeline, in a subprocess of its own (its peak
   resident memory is then its own);
2. the pack's graph (DSLoadModel, DSTextEncode x2, EmptyLatentImage,
   DSSampler, DSVAEDecode, SaveImage) queued on a real ComfyUI server;
3. ComfyUI's native graph (CheckpointLoaderSimple, CLIPTextEncode x2,
   EmptyLatentImage, KSampler, VAEDecode, SaveImage) on a server started the
   same way.

Each server graph gets a server process of its own (same harness, same base
directory and model files), so each peak RSS belongs to one graph only.

Figures are printed (run with `-s`, as `make bench` does) and written to
~/.cache/diffusers-studio/bench/last_run.md; nothing about speed is asserted.
Seconds per step are the mean interval between consecutive step events: the
websocket `progress` messages of the sampler node (receive times) for the
server graphs, `callback_on_step_end` for diffusers. The second prompt changes
only the seed, so a server reuses the loaded model and the encoded prompts.

Settings: 256x256, 4 steps, float32 on a CPU; 512x512, 20 steps, float16 when
CUDA is present (all three: the servers then start without --cpu, and
ComfyUI and the pack pick float16 on the GPU as diffusers is told to).
DS_BENCH_SIZE, DS_BENCH_STEPS and DS_BENCH_EXTRAS (all, none, or a comma
list of lora, cn1, cn2: the adapter runs, each on fresh servers after the
main table) override them. Next to wall seconds per step, CPU seconds per
step (user + system of the process, all threads) are reported: other
processes sharing the cores inflate the first, hardly the second.

DS_BENCH_MODEL selects the model: sd15 (the default), sdxl, or all (both, one
test each). SDXL is a full-size SDXL base architecture with random weights
(nodes/engine/configs/sdxl/, built once in float16 by the worker, with a
marker of its own), run by StableDiffusionXLPipeline, the same pack graph and
the same native graph (ComfyUI's CLIPTextEncode handles SDXL's two encoders);
no adapter runs. Its defaults: 1024x1024, 20 steps, float16 on CUDA; 512x512,
3 steps, float32 on a CPU. DS_BENCH_SIZE and DS_BENCH_STEPS override the
size and steps of every selected model. Its report goes to last_run_sdxl.md.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DS_BENCH_CACHE", "~/.cache/diffusers-studio/bench")).expanduser()
WORKER = HERE / "sd15_worker.py"
CFG = 7.0
SEEDS = (1234, 5678)
RUN_TIMEOUT = 1200.0


# ----------------------------------------------------------------- settings

# The adapter runs after the main table (DS_BENCH_EXTRAS=all, none, or a comma
# list of: lora, cn1, cn2).
EXTRAS = {
    "LoRA (rank 16)": {"lora": True},
    "1 ControlNet": {"controlnets": 1},
    "2 ControlNets": {"controlnets": 2},
}
_EXTRA_KEYS = {"lora": "LoRA (rank 16)", "cn1": "1 ControlNet", "cn2": "2 ControlNets"}


def _extras_selected(value: str) -> list:
    value = value.strip().lower()
    if value in ("", "0", "none", "no"):
        return []
    if value in ("1", "all", "yes"):
        return list(EXTRAS)
    return [_EXTRA_KEYS[key.strip()] for key in value.split(",") if key.strip() in _EXTRA_KEYS]


# DS_BENCH_MODEL: sd15 (default), sdxl or all. Per model: (size, steps) on CUDA
# and on a CPU, and whether the adapter runs exist for it.
MODEL_DEFAULTS = {
    "sd15": {"cuda": (512, 20), "cpu": (256, 4), "extras": True},
    "sdxl": {"cuda": (1024, 20), "cpu": (512, 3), "extras": False},
}


def _models_selected() -> list:
    value = os.environ.get("DS_BENCH_MODEL", "sd15").strip().lower()
    if value in ("all", "both"):
        return list(MODEL_DEFAULTS)
    models = [key.strip() for key in value.split(",") if key.strip() in MODEL_DEFAULTS]
    return models or ["sd15"]


def _settings(model: str = "sd15") -> dict:
    import torch

    cuda = torch.cuda.is_available()
    defaults = MODEL_DEFAULTS[model]
    size, steps = defaults["cuda" if cuda else "cpu"]
    return {
        "model": model,
        "device": "cuda" if cuda else "cpu",
        "dtype": "float16" if cuda else "float32",
        "size": int(os.environ.get("DS_BENCH_SIZE", size)),
        "steps": int(os.environ.get("DS_BENCH_STEPS", steps)),
        "extras": _extras_selected(os.environ.get("DS_BENCH_EXTRAS", "all")) if defaults["extras"] else [],
        "torch": torch.__version__,
    }


def _worker(*args: str, timeout: float = 3600) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DIFFUSERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, str(WORKER), *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(
        f"benchmark worker {args[0]} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )


def _ensure_model(model: str = "sd15") -> dict:
    import sd15_worker

    spec = sd15_worker.MODELS[model]
    if sd15_worker.is_complete(CACHE, model):
        info = json.loads((CACHE / spec["done"]).read_text())
        info["reused"] = True
        return info
    print(f"\n[bench] building the random full-size {spec['label']} model into {CACHE} (once; a few minutes)", flush=True)
    info = _worker("generate", str(CACHE), model)
    info["reused"] = False
    return info


# ---------------------------------------------------------------- graphs


def _pack_graph(names: dict, size: int, steps: int, seed: int, lora: bool = False, controlnets: int = 0) -> dict:
    import sd15_worker as w

    model, text = ["1", 0], ["1", 1]
    graph = {
        "1": {"class_type": "DSLoadModel", "inputs": {"model_name": names["checkpoint"], "dtype": "auto"}},
    }
    if lora:
        graph["20"] = {
            "class_type": "DSLoadLoRA",
            "inputs": {
                "model": model,
                "text_encoder": text,
                "lora_name": names["lora"],
                "strength_model": 1.0,
                "strength_text_encoder": 1.0,
            },
        }
        model, text = ["20", 0], ["20", 1]
    graph.update(
        {
            "2": {"class_type": "DSTextEncode", "inputs": {"text_encoder": text, "text": w.PROMPT, "clip_skip": 1}},
            "3": {"class_type": "DSTextEncode", "inputs": {"text_encoder": text, "text": w.NEGATIVE, "clip_skip": 1}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        }
    )
    positive, negative = ["2", 0], ["3", 0]
    if controlnets:
        graph["10"] = {
            "class_type": "DSLoadControlNet",
            "inputs": {"control_net_name": names["controlnet"], "dtype": "auto"},
        }
        graph["11"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
        for index in range(controlnets):
            node = str(12 + index)
            graph[node] = {
                "class_type": "DSApplyControlNet",
                "inputs": {
                    "positive": positive,
                    "negative": negative,
                    "control_net": ["10", 0],
                    "image": ["11", 0],
                    "strength": 1.0,
                    "start_percent": 0.0,
                    "end_percent": 1.0,
                    "guess_mode": False,
                },
            }
            positive, negative = [node, 0], [node, 1]
    graph.update(
        {
            "5": {
                "class_type": "DSSampler",
                "inputs": {
                    "model": model,
                    "positive": positive,
                    "negative": negative,
                    "latent_image": ["4", 0],
                    "seed": seed,
                    "steps": steps,
                    "cfg": CFG,
                    "sampler_name": "Euler",
                    "schedule": "normal",
                    "denoise": 1.0,
                    "start_step": 0,
                    "end_step": 10000,
                    "variation_seed": 0,
                    "variation_strength": 0.0,
                    "batch_seed_mode": "increment",
                },
            },
            "6": {"class_type": "DSVAEDecode", "inputs": {"vae": ["1", 2], "samples": ["5", 0], "tiled": False, "tile_size": 512}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench_pack"}},
        }
    )
    return graph


def _native_graph(names: dict, size: int, steps: int, seed: int, lora: bool = False, controlnets: int = 0) -> dict:
    import sd15_worker as w

    model, clip = ["1", 0], ["1", 1]
    graph = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": names["checkpoint"]}}}
    if lora:
        graph["20"] = {
            "class_type": "LoraLoader",
            "inputs": {"model": model, "clip": clip, "lora_name": names["lora"], "strength_model": 1.0, "strength_clip": 1.0},
        }
        model, clip = ["20", 0], ["20", 1]
    graph.update(
        {
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": w.PROMPT}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": w.NEGATIVE}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        }
    )
    positive, negative = ["2", 0], ["3", 0]
    if controlnets:
        graph["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": names["controlnet"]}}
        graph["11"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
        for index in range(controlnets):
            node = str(12 + index)
            graph[node] = {
                "class_type": "ControlNetApplyAdvanced",
                "inputs": {
                    "positive": positive,
                    "negative": negative,
                    "control_net": ["10", 0],
                    "image": ["11", 0],
                    "strength": 1.0,
                    "start_percent": 0.0,
                    "end_percent": 1.0,
                },
            }
            positive, negative = [node, 0], [node, 1]
    graph.update(
        {
            "5": {
                "class_type": "KSampler",
                "inputs": {
                    "model": model,
                    "seed": seed,
                    "steps": steps,
                    "cfg": CFG,
                    "sampler_name": "euler",
                    "scheduler": "normal",
                    "positive": positive,
                    "negative": negative,
                    "latent_image": ["4", 0],
                    "denoise": 1.0,
                },
            },
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench_native"}},
        }
    )
    return graph


# ------------------------------------------------------------ measurement


class RssMonitor:
    """Samples a process's resident memory (psutil) on a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:  # the process ended
                return
            self._stop.wait(self.interval)

    def rss(self) -> int:
        return self.process.memory_info().rss

    def hwm(self) -> int:
        """The kernel's own peak RSS of the process (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)


def _timed_run(client, graph: dict, loader: str, sampler: str, pid: int) -> dict:
    """Queue one prompt; times from the websocket messages' receive times.

    At each step event the server's CPU time (user + system, all threads) is
    read too: CPU seconds per step stay meaningful when other processes
    share the cores, where wall seconds per step do not.
    """
    import psutil

    process = psutil.Process(pid)
    stamps: list[tuple[float, dict]] = []
    cpu_steps: list[float] = []

    def on_message(message, _result):
        stamps.append((time.perf_counter(), message))
        if message.get("type") == "progress" and (message.get("data") or {}).get("node") == sampler:
            times = process.cpu_times()
            cpu_steps.append(times.user + times.system)

    start = time.perf_counter()
    result = client.run(graph, timeout=RUN_TIMEOUT, on_message=on_message)
    if result.status != "success":
        raise AssertionError(f"benchmark prompt failed:\n{result.summary()}")
    end = next(
        (t for t, m in stamps if m.get("type") == "executing" and (m.get("data") or {}).get("node") is None),
        time.perf_counter(),
    )
    steps = [t for t, m in stamps if m.get("type") == "progress" and (m.get("data") or {}).get("node") == sampler]
    starts = [(t, m["data"]["node"]) for t, m in stamps if m.get("type") == "executing" and m["data"].get("node")]
    node_s = {}
    for (t0, node), (t1, _next) in zip(starts, starts[1:] + [(end, None)]):
        node_s[node] = t1 - t0
    return {
        "run_s": end - start,
        "step_intervals": [b - a for a, b in zip(steps, steps[1:])],
        "step_cpu_intervals": [b - a for a, b in zip(cpu_steps, cpu_steps[1:])],
        "steps_seen": len(steps),
        "load_s": node_s.get(loader),
        "loader_ran": loader in node_s,
        "loader_cached": loader in result.cached_nodes(),
        "node_s": node_s,
    }


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _server_phase(name: str, graph_fn, names: dict, settings: dict, workdir: Path, extras: list, main: bool = True) -> dict:
    """One server process: the graph twice (two seeds) unless not `main`, then the extra variants."""
    from harness import server
    from harness.client import ComfyClient

    base = workdir / f"base_{name}"
    server.prepare_base_dir(base)
    for folder, key in (("checkpoints", "checkpoint"), ("loras", "lora"), ("controlnet", "controlnet")):
        if not names.get(key):
            continue
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
        link = base / "models" / folder / names[key]
        if not link.exists():
            link.symlink_to(CACHE / names[key])
    start = time.perf_counter()
    running = server.start_server(base, workdir / f"server_{name}.log", timeout=180,
                                  cpu=settings["device"] == "cpu")
    startup_s = time.perf_counter() - start
    try:
        problems = server.pack_import_problems(running.log_text())
        assert not problems, "the pack did not import:\n" + "\n".join(problems)
        client = ComfyClient(running.url, timeout=120)
        size, steps = settings["size"], settings["steps"]
        with RssMonitor(running.process.pid) as monitor:
            rss_idle = monitor.rss()
            first = second = None
            if main:
                first = _timed_run(client, graph_fn(names, size, steps, SEEDS[0]), "1", "5", running.process.pid)
                second = _timed_run(client, graph_fn(names, size, steps, SEEDS[1]), "1", "5", running.process.pid)
            peak_hwm, peak_sampled = monitor.hwm(), monitor.peak
            extra_runs = {}
            for label, kwargs in extras:
                extra_runs[label] = _timed_run(client, graph_fn(names, size, steps, SEEDS[0], **kwargs), "1", "5", running.process.pid)
    finally:
        running.stop()
    return {
        "startup_s": startup_s,
        "rss_idle": rss_idle,
        "first": first,
        "second": second,
        "peak_rss_bytes": peak_hwm,
        "peak_rss_sampled": peak_sampled,
        "extras": extra_runs,
    }


# ------------------------------------------------------------------ report


def _machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": mem_kib / 1024**2,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg": os.getloadavg(),
    }


def _gib(value) -> str:
    return f"{value / 1024**3:.2f}" if value else "-"


def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _report(settings, model_info, machine, versions, diff, pack, native) -> str:
    rows = []

    def per_step(run_pair, key="step_intervals"):
        return _mean([*run_pair[0].get(key, []), *run_pair[1].get(key, [])])

    d_runs = diff["runs"]
    figures = {
        "diffusers": {
            "load": diff["load_s"],
            "first": diff["load_s"] + d_runs[0]["run_s"],
            "step": per_step(d_runs),
            "cpu_step": per_step(d_runs, "step_cpu_intervals"),
            "second": d_runs[1]["run_s"],
            "second_load": "no (pipeline kept)",
            "peak": diff["peak_rss_bytes"],
        }
    }
    for label, phase in (("pack (DS nodes)", pack), ("ComfyUI native", native)):
        second = phase["second"]
        loaded = "yes" if second["loader_ran"] else ("no (loader cached)" if second["loader_cached"] else "no")
        figures[label] = {
            "load": phase["first"]["load_s"],
            "first": phase["first"]["run_s"],
            "step": per_step([phase["first"], phase["second"]]),
            "cpu_step": per_step([phase["first"], phase["second"]], "step_cpu_intervals"),
            "second": second["run_s"],
            "second_load": loaded,
            "peak": phase["peak_rss_bytes"],
        }
    rows.append(
        "| run | load s | first prompt s (incl. load) | s/step | CPU s/step | second prompt s (new seed) "
        "| model load on 2nd | peak RSS GiB |"
    )
    rows.append("|---|---:|---:|---:|---:|---:|---|---:|")
    for label, f in figures.items():
        rows.append(
            f"| {label} | {_fmt(f['load'])} | {_fmt(f['first'])} | {_fmt(f['step'], 3)} | {_fmt(f.get('cpu_step'), 3)} | {_fmt(f['second'])} "
            f"| {f['second_load']} | {_gib(f['peak'])} |"
        )
    p, d, n = figures["pack (DS nodes)"], figures["diffusers"], figures["ComfyUI native"]
    rows.append("")
    rows.append("| ratio | s/step | CPU s/step | first prompt | second prompt | peak RSS |")
    rows.append("|---|---:|---:|---:|---:|---:|")
    for label, other in (("pack / diffusers", d), ("pack / native", n)):
        rows.append(
            f"| {label} | {p['step'] / other['step']:.3f} | {_fmt(p['cpu_step'] / other['cpu_step'], 3)} "
            f"| {p['first'] / other['first']:.3f} "
            f"| {p['second'] / other['second']:.3f} | {p['peak'] / other['peak']:.3f} |"
        )
    if pack["extras"] or native["extras"]:
        rows.append("")
        rows.append(
            "| adapters (one prompt each) | pack s/step | pack CPU s/step | x pack base (CPU) "
            "| native s/step | native CPU s/step | x native base (CPU) |"
        )
        rows.append("|---|---:|---:|---:|---:|---:|---:|")
        rows.append(
            f"| none (main table) | {_fmt(p['step'], 3)} | {_fmt(p['cpu_step'], 3)} | 1.000 "
            f"| {_fmt(n['step'], 3)} | {_fmt(n['cpu_step'], 3)} | 1.000 |"
        )
        for label in pack["extras"]:
            pe, ne = pack["extras"][label], native["extras"].get(label, {})
            ps, pc = _mean(pe["step_intervals"]), _mean(pe.get("step_cpu_intervals", []))
            ns, nc = _mean(ne.get("step_intervals", [])), _mean(ne.get("step_cpu_intervals", []))
            rows.append(
                f"| {label} | {_fmt(ps, 3)} | {_fmt(pc, 3)} | {_fmt(pc / p['cpu_step'], 3)} "
                f"| {_fmt(ns, 3)} | {_fmt(nc, 3)} | {_fmt(nc / n['cpu_step'], 3)} |"
            )
    header = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']:.1f} GiB RAM; {machine['date']}.",
        f"Load average (1/5/15 min; other processes share these cores): at the start "
        f"{', '.join(f'{x:.1f}' for x in machine.get('loadavg_start', ()))}, at the end "
        f"{', '.join(f'{x:.1f}' for x in machine['loadavg'])}.",
        f"Software: Python {machine['python']}, torch {versions['torch']}, diffusers {versions['diffusers']}, "
        f"transformers {versions['transformers']}, ComfyUI {versions['comfyui']}.",
        f"Work: {model_info.get('label', 'SD1.5')} architecture, random weights (UNet {model_info['params']['unet'] / 1e6:.0f} M parameters, "
        f"float16 on disk), {settings['size']}x{settings['size']}, {settings['steps']} steps, Euler (normal schedule), "
        f"cfg {CFG}, batch 1, {settings['dtype']} on {settings['device']}; servers started "
        f"{'with --cpu' if settings['device'] == 'cpu' else 'on the GPU'}.",
        f"Server start-up (not counted above): pack {pack['startup_s']:.1f} s, native {native['startup_s']:.1f} s. "
        f"Server RSS before the first prompt: pack {_gib(pack['rss_idle'])} GiB, native {_gib(native['rss_idle'])} GiB. "
        f"Peak RSS is the process's VmHWM (psutil sampling: pack {_gib(pack['peak_rss_sampled'])}, "
        f"native {_gib(native['peak_rss_sampled'])} GiB); diffusers' is its own process's ru_maxrss.",
        "",
    ]
    return "\n".join(header + rows) + "\n"


def _versions() -> dict:
    import diffusers
    import torch
    import transformers

    comfy = "unknown"
    root = os.environ.get("COMFYUI_PATH")
    if root and (Path(root) / "comfyui_version.py").is_file():
        text = (Path(root) / "comfyui_version.py").read_text()
        comfy = text.split("__version__ =", 1)[-1].strip().strip('"')
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__, "comfyui": comfy}


# ------------------------------------------------------------------- test


@pytest.mark.parametrize("model", _models_selected())
def test_side_by_side(tmp_path, model):
    if not os.environ.get("COMFYUI_PATH"):
        pytest.skip("COMFYUI_PATH is not set: run with `make bench`")
    sys.path.insert(0, str(HERE))
    import sd15_worker as w

    spec = w.MODELS[model]
    settings = _settings(model)
    load_before = os.getloadavg()
    model_info = _ensure_model(model)
    model_info["label"] = spec["label"]
    names = {key: spec.get(key) for key in ("checkpoint", "lora", "controlnet")}
    print(f"\n[bench] model: {'reused' if model_info['reused'] else 'built'} in {CACHE}; settings {settings}", flush=True)

    diff = _worker(
        "diffusers", str(CACHE), str(settings["size"]), str(settings["steps"]), str(CFG),
        str(SEEDS[0]), str(SEEDS[1]), settings["dtype"], settings["device"], model,
    )
    print(f"[bench] diffusers: {json.dumps(diff)}", flush=True)

    pack = _server_phase("pack", _pack_graph, names, settings, tmp_path, [])
    print(f"[bench] pack: {json.dumps(pack)}", flush=True)
    native = _server_phase("native", _native_graph, names, settings, tmp_path, [])
    print(f"[bench] native: {json.dumps(native)}", flush=True)

    machine = _machine()
    machine["loadavg_start"] = load_before
    versions = _versions()
    _write_report(_report(settings, model_info, machine, versions, diff, pack, native), settings, diff, pack, native)

    # Adapters after the main table, each server again: base, LoRA, ControlNets.
    extras = [label for label in EXTRAS if label in settings["extras"]]
    if extras:
        for phase, name, graph_fn in ((pack, "pack_adapters", _pack_graph), (native, "native_adapters", _native_graph)):
            phase["extras"] = _server_phase(name, graph_fn, names, settings, tmp_path, [(x, EXTRAS[x]) for x in extras], main=False)[
                "extras"
            ]
            print(f"[bench] {name}: {json.dumps(phase['extras'])}", flush=True)
        machine = _machine()
        machine["loadavg_start"] = load_before
        _write_report(_report(settings, model_info, machine, versions, diff, pack, native), settings, diff, pack, native)


def _write_report(report: str, settings, diff, pack, native) -> None:
    print("\n" + report, flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = "last_run" if settings.get("model", "sd15") == "sd15" else f"last_run_{settings['model']}"
    (CACHE / f"{stem}.md").write_text(report)
    (CACHE / f"{stem}.json").write_text(
        json.dumps({"settings": settings, "diffusers": diff, "pack": pack, "native": native}, indent=1)
    )
