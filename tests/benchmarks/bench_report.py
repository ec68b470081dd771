"""The side-by-side benchmark's report: slope/intercept tables from the prompt records.

Kept apart from the test so the figures can be recomputed from a saved
last_run*.json (`python bench_report.py last_run.json`) after a run on
another machine (the GPU runs come back as JSON); several files given are
pooled into one report, their repetitions counted together.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import bench_stats as st

WAYS = ("diffusers", "pack", "native")
LABELS = {"diffusers": "diffusers pipeline (in a node)", "pack": "this pack (DS nodes)", "native": "ComfyUI native"}
GIB = 1024**3


def vm_hwm(pid: int) -> int:
    """The kernel's peak RSS of a process (VmHWM), in bytes; 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _times(prompts: list, way: str, key: str, extra=None) -> dict:
    out: dict = {}
    for record in sorted((p for p in prompts if p["way"] == way and p.get("extra") == extra), key=lambda p: p["rep"]):
        out.setdefault(record["steps"], []).append(record[key])
    return out


def fits(prompts: list, steps: list, extra=None) -> dict:
    """way -> {"wall": [per rep {slope, intercept}], "cpu": [...]}"""
    low, high = steps
    result = {}
    for way in WAYS:
        wall = _times(prompts, way, "run_s", extra)
        if low not in wall or high not in wall:
            continue
        result[way] = {"wall": st.per_repetition(wall, low, high),
                       "cpu": st.per_repetition(_times(prompts, way, "cpu_s", extra), low, high)}
    return result


def _node_medians(prompts: list, way: str, steps: int) -> dict:
    per_node: dict = {}
    for record in prompts:
        if record["way"] == way and record["steps"] == steps and not record.get("extra"):
            for node, seconds in record["node_s"].items():
                per_node.setdefault(node, []).append(seconds)
            for ui in record.get("ui", {}).values():
                for key, value in ui["ds_bench"][0].items():
                    if isinstance(value, float) and key != "load_s":
                        per_node.setdefault(key, []).append(value)
    return {node: st.summary(values)["median"] for node, values in per_node.items()}


NODE_NAMES = {"1": "load / diffusers call", "2": "encode +", "3": "encode -", "4": "empty latent", "5": "sampler",
              "6": "VAE decode", "7": "save"}


def _denoiser(model: dict) -> str:
    """Names the denoiser and its size: a UNet for SD1/SDXL, a transformer for SD3/Flux."""
    params = model["params"]
    name = "unet" if "unet" in params else "transformer"
    label = "UNet" if name == "unet" else "transformer"
    layers = f", {model['layers']} blocks" if "layers" in model else ""
    return f"{label} {params[name] / 1e6:.0f} M parameters{layers}"


def _processes(data: dict) -> str:
    """How the ways shared processes: one server for all, or a fresh server per way and repetition."""
    if data.get("processes") == "alternate":
        start = f"median start {data['startup_s']:.1f} s, " if data.get("startup_s") else ""
        return (f"each way in a ComfyUI server of its own, started afresh for every repetition ({start}"
                f"previews off; a 1-step warm-up prompt loads the model)")
    return f"one ComfyUI process (started in {data['startup_s']:.1f} s, previews off) runs all three ways"


def render(data: dict) -> str:
    s, machine, versions = data["settings"], data["machine"], data["versions"]
    low, high = s["steps"]
    lines = [
        f"Machine: {machine.get('gpu', 'no GPU')}; {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['ram_gib']:.1f} GiB RAM; {machine['date']}. Load average at the start "
        f"{', '.join(f'{x:.1f}' for x in data['machine_start']['loadavg'])}, at the end "
        f"{', '.join(f'{x:.1f}' for x in machine['loadavg'])}.",
        f"Software: Python {machine['python']}, torch {versions['torch']}, diffusers {versions['diffusers']}, "
        f"transformers {versions['transformers']}, ComfyUI {versions['comfyui']}.",
        f"Work: {data['model'].get('label', s['model'])} architecture, random weights ({_denoiser(data['model'])}"
        f"), {s['size']}x{s['size']}, Euler (normal "
        f"schedule), cfg {s.get('cfg', 7.0):g}, batch 1, {s['dtype']} on {s['device']}; {_processes(data)}; {s['reps']} "
        f"repetitions x {low} and {high} steps per way, interleaved. Figures: median (min-max) over repetitions.",
    ]
    if data["prompts"]:
        lines += _main_tables(data)
    if data.get("extras"):
        lines += _extras_table(data)
    return "\n".join(lines) + "\n"


def _extras_table(data: dict) -> list:
    """Per adapter and way: its slope against the plain graph's in the same server (records without a plain
    variant, from before the baseline existed, show the adapter alone)."""
    steps = data["settings"]["steps"]
    lines = ["", "Adapters: each against the plain graph in the same server, interleaved; per repetition the "
             "added s/step is the adapter graph's slope minus the plain one's; median (min-max) over repetitions.",
             "", "| adapter | way | reps | plain s/step | adapter s/step | added s/step | adapter / plain "
             "| adapter fixed s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(r["extra"] for r in data["extras"]):
        for way in ("pack", "native"):
            mine = [r for r in data["extras"] if r["extra"] == label and r["way"] == way]
            adapter = fits([r for r in mine if r.get("variant", "adapter") == "adapter"], steps, extra=label)
            plain = fits([r for r in mine if r.get("variant") == "plain"], steps, extra=label)
            if way not in adapter:
                continue
            a = adapter[way]["wall"]
            p = plain[way]["wall"] if way in plain else []
            added = st.summary(x["slope"] - y["slope"] for x, y in zip(a, p)) if p else None
            ratio = st.ratio_summary(a, p, "slope") if p else None
            lines.append(
                f"| {label} | {way} | {len(a)} | {st.fmt_spread(st.summary(r['slope'] for r in p), 3) if p else '-'} "
                f"| {st.fmt_spread(st.summary(r['slope'] for r in a), 3)} "
                f"| {st.fmt_spread(added, 3) if added else '-'} | {st.fmt_spread(ratio) if ratio else '-'} "
                f"| {st.summary(r['intercept'] for r in a)['median']:.2f} |")
    if data.get("peak_rss_extras"):
        lines += ["", "Peak RSS of the adapter servers (GiB): " + "; ".join(
            f"{name} {value / GIB:.2f}" for name, value in data["peak_rss_extras"].items()) + "."]
    return lines


def _main_tables(data: dict) -> list:
    """The three ways' slopes, intercepts and ratios, where the time of a prompt goes, and memory."""
    s = data["settings"]
    prompts, warmup = data["prompts"], data["warmup"]
    low, high = s["steps"]
    fit = fits(prompts, s["steps"])
    cuda = s["device"] == "cuda"
    lines = [
        "",
        "| way | s/step (slope) | fixed s/run (intercept) | IQR s/step | IQR fixed | CPU s/step | CPU fixed s "
        f"| {low} steps s | {high} steps s | load s (warm-up) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for way in WAYS:
        if way not in fit:
            continue
        wall, cpu = fit[way]["wall"], fit[way]["cpu"]
        slope, icpt = st.summary(r["slope"] for r in wall), st.summary(r["intercept"] for r in wall)
        times = _times(prompts, way, "run_s")
        load = warmup[way]["node_s"].get("1")
        ui = [u["ds_bench"][0] for u in warmup[way].get("ui", {}).values()]
        if way == "diffusers" and ui:
            load = ui[0]["load_s"]
        lines.append(
            f"| {LABELS[way]} | {st.fmt_spread(slope, 4)} | {st.fmt_spread(icpt, 3)} "
            f"| {slope['q1']:.4f}-{slope['q3']:.4f} | {icpt['q1']:.3f}-{icpt['q3']:.3f} "
            f"| {st.summary(r['slope'] for r in cpu)['median']:.4f} | {st.summary(r['intercept'] for r in cpu)['median']:.3f} "
            f"| {st.summary(times[low])['median']:.3f} | {st.summary(times[high])['median']:.3f} "
            f"| {load if load is None else f'{load:.2f}'} |"
        )
    lines += ["", "| ratio (per repetition, then median (min-max)) | s/step | fixed s/run | CPU s/step | "
              f"{high}-step prompt |", "|---|---:|---:|---:|---:|"]
    for ours, theirs in (("pack", "diffusers"), ("pack", "native"), ("native", "diffusers")):
        if ours not in fit or theirs not in fit:
            continue
        hi_o, hi_t = _times(prompts, ours, "run_s")[high], _times(prompts, theirs, "run_s")[high]
        lines.append(
            f"| {ours} / {theirs} | {st.fmt_spread(st.ratio_summary(fit[ours]['wall'], fit[theirs]['wall'], 'slope'))} "
            f"| {st.fmt_spread(st.ratio_summary(fit[ours]['wall'], fit[theirs]['wall'], 'intercept'))} "
            f"| {st.fmt_spread(st.ratio_summary(fit[ours]['cpu'], fit[theirs]['cpu'], 'slope'))} "
            f"| {st.fmt_spread(st.summary(a / b for a, b in zip(hi_o, hi_t)))} |"
        )
    lines += ["", f"Where a {low}-step prompt's time goes (median s per node; diffusers: its call's time "
              "before the first step ends and after the last one):", ""]
    for way in WAYS:
        medians = _node_medians(prompts, way, low)
        parts = [f"{NODE_NAMES.get(k, k)} {v:.3f}" for k, v in sorted(medians.items())]
        lines.append(f"- {LABELS[way]}: " + ", ".join(parts))
    lines.append("")
    if cuda:
        lines += ["| way | resident weights GiB (warm-up) | peak above resident GiB, "
                  f"{high} steps (median) | resident + peak GiB |", "|---|---:|---:|---:|"]
        for way in WAYS:
            w = warmup[way]
            resident = (w["alloc_after"] - w["alloc_before"]) / GIB
            peaks = [(p["peak"] - p["alloc_before"]) / GIB for p in prompts if p["way"] == way and p["steps"] == high]
            work = st.summary(peaks)["median"]
            lines.append(f"| {LABELS[way]} | {resident:.2f} | {work:.2f} | {resident + work:.2f} |")
        lines.append("")
    reloads = {way: sum(1 for p in prompts if p["way"] == way and "1" in p["node_s"]) for way in ("pack", "native")}
    lines.append(f"Loader node re-ran in timed prompts (should be 0: the model stays loaded): "
                 f"pack {reloads['pack']}, native {reloads['native']} of {len(prompts) // 3} each.")
    rss = "; ".join(f"{way} +{(warmup[way]['rss_after'] - warmup[way]['rss_before']) / GIB:.2f}"
                    for way in WAYS if way in warmup)
    if data.get("peak_rss_by_way"):
        peaks = data["peak_rss_by_way"]
        each = "; ".join(f"{way} {peaks[way] / GIB:.2f}" for way in WAYS if way in peaks)
        ratio = f" (pack / diffusers {peaks['pack'] / peaks['diffusers']:.3f}, pack / native " \
                f"{peaks['pack'] / peaks['native']:.3f})" if len(peaks) == 3 and all(peaks.values()) else ""
        lines.append(f"Process RSS growth at each way's first warm-up (GiB): {rss}; peak RSS of each way's "
                     f"servers (VmHWM, GiB): {each}{ratio}.")
    else:
        lines.append(f"Process RSS growth at each way's warm-up (GiB): {rss}; process peak RSS "
                     f"{data.get('peak_rss', 0) / GIB:.2f} GiB.")
    return lines


def pooled(runs: list) -> dict:
    """Several runs' records as one (repetitions renumbered; the first run's warm-up and settings)."""
    data = json.loads(json.dumps(runs[0]))
    for run in runs[1:]:
        offset = data["settings"]["reps"]
        data["prompts"] += [dict(p, rep=p["rep"] + offset) for p in run["prompts"]]
        data["settings"]["reps"] += run["settings"]["reps"]
        for way, peak in run.get("peak_rss_by_way", {}).items():  # alternating servers: each way's highest
            data.setdefault("peak_rss_by_way", {})[way] = max(peak, data["peak_rss_by_way"].get(way, 0))
        offset = 1 + max((r["rep"] for r in data.get("extras", [])), default=-1)
        data["extras"] = data.get("extras", []) + [dict(r, rep=r["rep"] + offset) for r in run.get("extras", [])]
        for name, peak in run.get("peak_rss_extras", {}).items():
            data.setdefault("peak_rss_extras", {})[name] = max(peak, data["peak_rss_extras"].get(name, 0))
    return data


if __name__ == "__main__":  # python bench_report.py RUN.json [MORE.json ...]: one report, runs pooled
    print(render(pooled([json.loads(Path(arg).read_text()) for arg in sys.argv[1:]])))
