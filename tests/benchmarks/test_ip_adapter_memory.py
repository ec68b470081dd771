"""IP-Adapter memory: what an adapter and its image encoder add to a full-size model.

For SD1.5 (ip-adapter_sd15 + CLIP ViT-H-14) and SDXL (ip-adapter_sdxl + CLIP
ViT-bigG-14), float16:

1. the full-size UNet is built on the meta device from the configs the pack
   bundles (`nodes/engine/configs/{sd1,sdxl}/unet.json`), only to read each
   cross-attention layer's (inner, cross_attention_dim) shape in
   attention-processor order (the h94 numbering ip_adapter.1, .3, .5, ...)
   and the UNet's own size;
2. random full-size files are written once into
   ~/.cache/diffusers-studio/bench/ip_adapter/ (DS_BENCH_CACHE overrides the
   parent): the adapters in the h94 "base" layout (image_proj.proj + norm,
   ip_adapter.N.to_k_ip/to_v_ip) and the encoders as transformers-layout
   single .safetensors files (CLIPVisionModelWithProjection shapes of
   ViT-H-14 and ViT-bigG-14), streamed tensor by tensor so that writing
   never holds a whole model (about 5.7 GB on disk, a few minutes once);
3. a fresh subprocess per model family loads the encoder with the pack's
   `load_image_encoder` and then the adapter with the pack's
   `load_ip_adapter` (both dtype=float16), and reports the bytes of what
   each holds (tensor nbytes of the adapter module; parameter + buffer
   nbytes of the encoder) and the process's resident-memory growth
   (psutil RSS, and its anonymous part from /proc) right after each load
   and again once every tensor has been read (the pack keeps safetensors
   memory-mapped, so pages become resident only when first read).

Figures are printed (run with `-s`, as `make bench` does) and written to
~/.cache/diffusers-studio/bench/ip_adapter_last_run.md; nothing is asserted.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parent
REPO_ROOT = TESTS_DIR.parent
CONFIGS = REPO_ROOT / "nodes" / "engine" / "configs"
BENCH_CACHE = Path(os.environ.get("DS_BENCH_CACHE", "~/.cache/diffusers-studio/bench")).expanduser()
CACHE = BENCH_CACHE / "ip_adapter"
DONE = "complete.json"
FORMAT = 1  # bump when the written files change

MB = 1e6

# Full-size CLIP vision towers (LAION OpenCLIP ViT-H-14 and ViT-bigG-14, as
# CLIPVisionModelWithProjection), with the settings the pack's single-file
# reader infers from the shapes (gelu, eps 1e-5, 16 heads).
ENCODERS = {
    "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors": dict(
        hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, intermediate_size=5120,
        patch_size=14, image_size=224, projection_dim=1024,
    ),
    "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors": dict(
        hidden_size=1664, num_hidden_layers=48, num_attention_heads=16, intermediate_size=8192,
        patch_size=14, image_size=224, projection_dim=1280,
    ),
}

FAMILIES = {
    "SD1.5": dict(
        config="sd1", adapter="ip-adapter_sd15.safetensors",
        encoder="CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", published="under 100 MB (44.6 MB file)",
    ),
    "SDXL": dict(
        config="sdxl", adapter="ip-adapter_sdxl.safetensors",
        encoder="CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", published="about 700 MB (703 MB file)",
    ),
}
TOKENS = 4  # image tokens of a base adapter


# ------------------------------------------------------------ worker side
# (runs in subprocesses: `python test_ip_adapter_memory.py generate|measure ...`)

def _register_pack() -> None:
    """The checkout importable as `diffusers_studio`, as tests/conftest.py does."""
    import importlib.util

    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    if "diffusers_studio" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "diffusers_studio", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["diffusers_studio"] = module
    spec.loader.exec_module(module)


def _meta_unet(config_dir: str):
    import torch
    from diffusers import UNet2DConditionModel

    config = json.loads((CONFIGS / config_dir / "unet.json").read_text())
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def unet_facts(config_dir: str) -> dict:
    """Cross-attention shapes (processor order) and the UNet's size, from a meta-device build."""
    _register_pack()
    from harness.models_ip_adapter import _cross_attention_shapes

    unet = _meta_unet(config_dir)
    shapes = _cross_attention_shapes(unet)
    params = sum(p.numel() for p in unet.parameters())
    return {
        "shapes": shapes,
        "cross": int(unet.config.cross_attention_dim),
        "unet_params": int(params),
        "unet_fp16_bytes": int(params) * 2,
    }


def _adapter_specs(facts: dict, embed: int) -> list:
    """(key, shape, dtype) of a base h94 adapter for these cross-attention shapes."""
    cross = facts["cross"]
    specs = [
        ("image_proj.proj.weight", (TOKENS * cross, embed), "F16"),
        ("image_proj.proj.bias", (TOKENS * cross,), "F16"),
        ("image_proj.norm.weight", (cross,), "F16"),
        ("image_proj.norm.bias", (cross,), "F16"),
    ]
    for index, (inner, width) in enumerate(facts["shapes"]):
        n = 2 * index + 1
        specs.append((f"ip_adapter.{n}.to_k_ip.weight", (inner, width), "F16"))
        specs.append((f"ip_adapter.{n}.to_v_ip.weight", (inner, width), "F16"))
    return specs


def _encoder_config(name: str):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_act="gelu", layer_norm_eps=1e-5, **ENCODERS[name])


def _encoder_specs(name: str) -> list:
    """(key, shape, dtype) of a transformers-layout CLIPVisionModelWithProjection file."""
    import torch
    from transformers import CLIPVisionModelWithProjection

    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(_encoder_config(name))
    specs = []
    for key, tensor in model.state_dict().items():
        dtype = "I64" if tensor.dtype == torch.int64 else "F16"
        specs.append((key, tuple(tensor.shape), dtype))
    return specs


def _write_streamed(path: Path, specs: list, seed: int) -> int:
    """A .safetensors file of random tensors, written one tensor at a time."""
    import numpy as np
    import torch

    sizes = {"F16": 2, "I64": 8}
    header, offset = {}, 0
    for key, shape, dtype in specs:
        nbytes = sizes[dtype]
        for dim in shape:
            nbytes *= dim
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", "note": "random weights, diffusers-studio benchmark"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    generator = torch.Generator().manual_seed(seed)
    tmp = path.with_suffix(".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for key, shape, dtype in specs:
            if dtype == "I64":  # position_ids
                tensor = torch.arange(shape[-1], dtype=torch.int64).expand(shape).contiguous()
            elif key.endswith(("norm.weight", "layer_norm1.weight", "layer_norm2.weight",
                               "pre_layrnorm.weight", "post_layernorm.weight")):
                tensor = torch.ones(shape, dtype=torch.float16)
            else:
                tensor = (torch.randn(shape, generator=generator) * 0.02).to(torch.float16)
            fh.write(np.ascontiguousarray(tensor.numpy()).tobytes())
            del tensor
    os.replace(tmp, path)
    return path.stat().st_size


def generate(cache: Path) -> dict:
    """Writes the adapters and encoders (skipped when complete.json matches)."""
    cache.mkdir(parents=True, exist_ok=True)
    done = cache / DONE
    if done.exists():
        info = json.loads(done.read_text())
        if info.get("format") == FORMAT and all((cache / f).exists() for f in info.get("files", {})):
            info["reused"] = True
            return info
    start = time.perf_counter()
    files = {}
    for seed, name in enumerate(ENCODERS):
        files[name] = _write_streamed(cache / name, _encoder_specs(name), seed)
    for seed, (family, spec) in enumerate(FAMILIES.items(), start=10):
        facts = unet_facts(spec["config"])
        embed = ENCODERS[spec["encoder"]]["projection_dim"]
        files[spec["adapter"]] = _write_streamed(cache / spec["adapter"], _adapter_specs(facts, embed), seed)
    info = {"format": FORMAT, "files": files, "seconds": round(time.perf_counter() - start, 1)}
    done.write_text(json.dumps(info, indent=1))
    info["reused"] = False
    return info


def _memory() -> dict:
    import psutil

    rss = psutil.Process().memory_info().rss
    anon = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"rss": rss, "anon": anon}


def _growth(before: dict, after: dict) -> dict:
    return {
        "rss": after["rss"] - before["rss"],
        "anon": None if before["anon"] is None or after["anon"] is None else after["anon"] - before["anon"],
    }


def _tensor_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _touch(module) -> None:
    """Reads every byte of every tensor (as a first forward pass would), without copying."""
    import torch

    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.sum()


def measure(family: str, cache: Path) -> dict:
    """Loads encoder then adapter through the pack's loaders, in this (fresh) process."""
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    _register_pack()
    from diffusers_studio.nodes.engine.image_encoder import load_image_encoder
    from diffusers_studio.nodes.engine.ip_adapter_loading import load_ip_adapter

    spec = FAMILIES[family]
    facts = unet_facts(spec["config"])  # imports diffusers/transformers before the baseline too
    gc.collect()
    base = _memory()
    t0 = time.perf_counter()
    encoder = load_image_encoder(str(cache / spec["encoder"]), dtype=torch.float16)
    t_enc = time.perf_counter() - t0
    gc.collect()
    encoder_loaded = _memory()
    _touch(encoder.model)
    after_encoder = _memory()
    t0 = time.perf_counter()
    adapter = load_ip_adapter(str(cache / spec["adapter"]), encoder, dtype=torch.float16)
    t_ad = time.perf_counter() - t0
    gc.collect()
    adapter_loaded = _memory()
    _touch(adapter.weights)
    after_adapter = _memory()

    weights = adapter.weights
    proj_bytes = _tensor_bytes(weights.projection)
    kv_bytes = sum(t.numel() * t.element_size() for t in list(weights.to_k_ip) + list(weights.to_v_ip))
    dtypes = sorted({str(t.dtype) for t in weights.parameters()} | {str(p.dtype) for p in encoder.model.parameters()})
    enc_params = sum(p.numel() for p in encoder.model.parameters())
    return {
        "family": family,
        "adapter_file": spec["adapter"],
        "encoder_file": spec["encoder"],
        "published": spec["published"],
        "variant": adapter.variant,
        "layers": weights.num_layers,
        "cross": adapter.cross_attention_dim,
        "embed": adapter.image_embed_dim,
        "dtypes": dtypes,
        "adapter_params": int(sum(p.numel() for p in weights.parameters())),
        "adapter_bytes": int(_tensor_bytes(weights)),
        "adapter_projection_bytes": int(proj_bytes),
        "adapter_kv_bytes": int(kv_bytes),
        "adapter_file_bytes": (cache / spec["adapter"]).stat().st_size,
        "adapter_growth_on_load": _growth(after_encoder, adapter_loaded),
        "adapter_growth": _growth(after_encoder, after_adapter),
        "adapter_load_s": round(t_ad, 2),
        "encoder_params": int(enc_params),
        "encoder_param_bytes": int(sum(p.numel() * p.element_size() for p in encoder.model.parameters())),
        "encoder_bytes": int(_tensor_bytes(encoder.model)),
        "encoder_file_bytes": (cache / spec["encoder"]).stat().st_size,
        "encoder_growth_on_load": _growth(base, encoder_loaded),
        "encoder_growth": _growth(base, after_encoder),
        "encoder_load_s": round(t_enc, 2),
        "unet_params": facts["unet_params"],
        "unet_fp16_bytes": facts["unet_fp16_bytes"],
        "rss_before": base["rss"],
    }


def _main(argv: list) -> None:
    command, rest = argv[0], argv[1:]
    if command == "generate":
        result = generate(Path(rest[0]))
    elif command == "measure":
        result = measure(rest[0], Path(rest[1]))
    else:
        raise SystemExit(f"unknown command {command}")
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------- test side

def _run_worker(*args: str, timeout: float = 1800) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DIFFUSERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(
        f"ip_adapter_memory worker {args[0]} failed (exit {done.returncode}):\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    )


def _mb(value) -> str:
    return "n/a" if value is None else f"{value / MB:.1f}"


def _machine() -> str:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"


def _report(results: list, gen: dict) -> str:
    import diffusers
    import safetensors
    import torch
    import transformers

    lines = [
        f"Machine: {_machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Software: Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, safetensors {safetensors.__version__}.",
        f"Files: {'reused from' if gen.get('reused') else 'written into'} {CACHE} "
        f"({sum(gen['files'].values()) / 1e9:.2f} GB; writing took {gen.get('seconds', '?')} s when written).",
        "",
        "| model | adapter (h94 base) | layers | adapter params M | adapter fp16 MB (projection + to_k/to_v) "
        "| adapter RSS growth MB: on load / once read (anon once read) | published | UNet fp16 MB | adapter / UNet |",
        "|---|---|---:|---:|---|---|---|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['family']} | {r['adapter_file']} | {r['layers']} | {r['adapter_params'] / 1e6:.1f} "
            f"| {_mb(r['adapter_bytes'])} ({_mb(r['adapter_projection_bytes'])} + {_mb(r['adapter_kv_bytes'])}) "
            f"| {_mb(r['adapter_growth_on_load']['rss'])} / {_mb(r['adapter_growth']['rss'])} ({_mb(r['adapter_growth']['anon'])}) "
            f"| {r['published']} "
            f"| {_mb(r['unet_fp16_bytes'])} | {100 * r['adapter_bytes'] / r['unet_fp16_bytes']:.1f}% |"
        )
    lines += [
        "",
        "| model | image encoder | encoder params M | encoder fp16 MB (params) "
        "| encoder RSS growth MB: on load / once read (anon once read) "
        "| encoder load s | adapter load s | adapter + encoder fp16 MB |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['family']} | {r['encoder_file']} | {r['encoder_params'] / 1e6:.1f} | {_mb(r['encoder_param_bytes'])} "
            f"| {_mb(r['encoder_growth_on_load']['rss'])} / {_mb(r['encoder_growth']['rss'])} ({_mb(r['encoder_growth']['anon'])}) "
            f"| {r['encoder_load_s']} "
            f"| {r['adapter_load_s']} | {_mb(r['adapter_bytes'] + r['encoder_bytes'])} |"
        )
    dtypes = sorted({d for r in results for d in r["dtypes"]})
    lines += ["", f"Tensor dtypes held after loading: {', '.join(dtypes)}. "
              "MB = 10^6 bytes. RSS growth is measured across each load in a fresh process per model "
              "(encoder first, then the adapter): 'on load' right after the pack's loader returns, 'once read' "
              "after every tensor has been read once (as a first forward pass does); 'anon' is the RssAnon "
              "part, the rest is file-backed pages of the memory-mapped .safetensors."]
    return "\n".join(lines)


def test_ip_adapter_memory():
    print(f"\n[bench] IP-Adapter memory: files in {CACHE} (written once; about 5.7 GB)", flush=True)
    gen = _run_worker("generate", str(CACHE), timeout=3600)
    results = [_run_worker("measure", family, str(CACHE)) for family in FAMILIES]
    report = _report(results, gen)
    print("\n" + report, flush=True)
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    (BENCH_CACHE / "ip_adapter_last_run.md").write_text(report + "\n")
    (BENCH_CACHE / "ip_adapter_last_run.json").write_text(json.dumps({"generate": gen, "results": results}, indent=1))


if __name__ == "__main__":
    _main(sys.argv[1:])
