"""Out-of-process work for the side-by-side benchmark: build the random model, run diffusers.

Run as a script so that each job has a process of its own: the model
generation's memory is returned to the OS when it ends, and the diffusers
run's peak resident memory (`ru_maxrss`) is its own, comparable with the
ComfyUI server process's.

    python sd15_worker.py generate CACHE_DIR [MODEL]
    python sd15_worker.py fill CACHE_DIR   (the FLUX.1 Fill transformer, for the `fill` extra)
    python sd15_worker.py diffusers CACHE_DIR SIZE STEPS CFG SEED1 SEED2 DTYPE DEVICE [MODEL]

MODEL is sd15 (the default), sdxl, sd35m (dit_bench_model.py) or flux (flux_bench_model.py). Both print one JSON line (prefixed
`RESULT `) on stdout.

The model is a full-size SD1.5 architecture (the configs the pack bundles under
nodes/engine/configs/sd1/) with seeded random weights, stored as float16:
a single-file LDM checkpoint (what DSLoadModel and CheckpointLoaderSimple
read), the same weights as a diffusers folder (what StableDiffusionPipeline
reads), a kohya-format LoRA and an LDM-format ControlNet of full size.

The SDXL model (`generate CACHE sdxl`) is a full-size SDXL base architecture
(nodes/engine/configs/sdxl/: UNet of about 2.6 B parameters, CLIP-L, OpenCLIP
bigG with projection, VAE), built directly in float16 (this machine's memory
would not hold two float32 copies), saved as an SDXL single-file LDM
checkpoint (`ldm_export.save_sdxl_single_file`) and as a diffusers folder for
StableDiffusionXLPipeline; no LoRA or ControlNet. It has its own DONE marker,
so the two models are built and reused independently.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parent
REPO_ROOT = TESTS_DIR.parent
CONFIGS_ROOT = REPO_ROOT / "nodes" / "engine" / "configs"
CONFIGS = CONFIGS_ROOT / "sd1"

CHECKPOINT = "ds_bench_sd15_random.safetensors"
DIFFUSERS_FOLDER = "ds_bench_sd15_random"
LORA = "ds_bench_sd15_random_lora.safetensors"
CONTROLNET = "ds_bench_sd15_random_controlnet.safetensors"
DONE = "complete.json"
FORMAT = 1  # bump when the files' content changes

SDXL_CHECKPOINT = "ds_bench_sdxl_random.safetensors"
SDXL_DIFFUSERS_FOLDER = "ds_bench_sdxl_random"
SDXL_DONE = "complete_sdxl.json"
SDXL_FORMAT = 1

import dit_bench_model  # noqa: E402  (beside this file)
import flux_bench_model  # noqa: E402
import sd35m_ip_adapter  # noqa: E402

# Per model: the files the benchmark reads and the marker of a finished build.
MODELS = {
    "sd35m": {"label": "SD3.5 medium", "checkpoint": dit_bench_model.CHECKPOINT, "folder": dit_bench_model.FOLDER,
              "done": dit_bench_model.DONE, "format": dit_bench_model.FORMAT, "latent": "sd3",
              "controlnet": dit_bench_model.CONTROLNET, "ip_adapter": sd35m_ip_adapter.ADAPTER,
              "clip_vision": sd35m_ip_adapter.ENCODER},
    "flux": {"label": "FLUX.1 schnell (float8)", "transformer": flux_bench_model.TRANSFORMER,
             "t5": flux_bench_model.T5, "clip_l": flux_bench_model.CLIP_L, "vae": flux_bench_model.VAE,
             "lora": flux_bench_model.LORA, "fill": flux_bench_model.FILL,
             "folder": flux_bench_model.FOLDER, "done": flux_bench_model.DONE, "format": flux_bench_model.FORMAT,
             "latent": "sd3", "cfg": 1.0},
    "sd15": {"label": "SD1.5", "checkpoint": CHECKPOINT, "folder": DIFFUSERS_FOLDER, "done": DONE, "format": FORMAT,
             "lora": LORA, "controlnet": CONTROLNET},
    "sdxl": {"label": "SDXL", "checkpoint": SDXL_CHECKPOINT, "folder": SDXL_DIFFUSERS_FOLDER, "done": SDXL_DONE,
             "format": SDXL_FORMAT},
}

PIPELINES = {"sdxl": "StableDiffusionXLPipeline", "sd35m": "StableDiffusion3Pipeline"}  # else SD1.5's

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def _config(name: str, family: str = "sd1") -> dict:
    data = json.loads((CONFIGS_ROOT / family / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _emit(payload: dict) -> None:
    sys.stdout.write("RESULT " + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def is_complete(cache: Path, model: str = "sd15") -> bool:
    if model == "sd35m":
        return dit_bench_model.is_complete(cache) and sd35m_ip_adapter.is_complete(cache)
    if model == "flux":
        return flux_bench_model.is_complete(cache)
    spec = MODELS[model]
    marker = Path(cache) / spec["done"]
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format") == spec["format"]
    except ValueError:
        return False


def _build(family: str) -> dict:
    """The UNet, VAE and text encoder(s) of a bundled config family, seeded random weights.

    The parameters take torch's default dtype (the SDXL build sets float16).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    modules = {}
    torch.manual_seed(0)
    modules["unet"] = UNet2DConditionModel.from_config(_config("unet.json", family)).eval()
    torch.manual_seed(1)
    modules["vae"] = AutoencoderKL.from_config(_config("vae.json", family)).eval()
    torch.manual_seed(2)
    modules["text_encoder"] = CLIPTextModel(CLIPTextConfig(**_config("text_encoder.json", family))).eval()
    if (CONFIGS_ROOT / family / "text_encoder_2.json").is_file():
        torch.manual_seed(3)
        config = CLIPTextConfig(**_config("text_encoder_2.json", family))
        modules["text_encoder_2"] = CLIPTextModelWithProjection(config).eval()
    return modules


def generate(cache: Path) -> dict:
    import torch
    from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionPipeline

    import ldm_export
    import tiny_models
    from harness import models_controlnet, models_lora

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    built = _build("sd1")
    unet, vae, text_encoder = built["unet"], built["vae"], built["text_encoder"]
    timings["build_s"] = time.perf_counter() - start

    # The LoRA and ControlNet follow the UNet's shapes; build them before halving.
    start = time.perf_counter()
    lora = models_lora.kohya_lora(unet, text_encoder, seed=3, rank=16, magnitude=0.02)
    torch.manual_seed(4)
    controlnet = ControlNetModel.from_unet(unet)
    models_controlnet._randomise(controlnet, seed=4, std=0.02)
    timings["adapters_build_s"] = time.perf_counter() - start

    start = time.perf_counter()
    with torch.no_grad():
        for module in (unet, vae, text_encoder, controlnet):
            module.to(torch.float16)
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    ldm_export.save_sd1_single_file(components, cache / CHECKPOINT)
    scheduler = EulerDiscreteScheduler.from_config(_config("scheduler_config.json"))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_models.clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(cache / DIFFUSERS_FOLDER), safe_serialization=True)
    from safetensors.torch import save_file

    save_file({k: v.to(torch.float16).contiguous() for k, v in lora.items()}, str(cache / LORA))
    models_controlnet.save_ldm_single_file(controlnet, cache / CONTROLNET)
    timings["save_s"] = time.perf_counter() - start
    params = {
        "unet": sum(p.numel() for p in unet.parameters()),
        "vae": sum(p.numel() for p in vae.parameters()),
        "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
        "controlnet": sum(p.numel() for p in controlnet.parameters()),
    }
    result = {"format": FORMAT, "params": params, "timings": timings, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    (cache / DONE).write_text(json.dumps(result, indent=1))
    return result


def generate_sdxl(cache: Path) -> dict:
    """The full-size SDXL base model, built in float16 and saved as soon as built."""
    import gc

    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    start = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # parameters are created in float16: no float32 copy ever exists
    try:
        with torch.no_grad():
            modules = _build("sdxl")
    finally:
        torch.set_default_dtype(previous)
    import ldm_export
    import tiny_models

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    timings = {}
    with torch.no_grad():
        for module in modules.values():
            module.to(torch.float16)  # a no-op unless a library forced float32 somewhere
    timings["build_s"] = time.perf_counter() - start
    unet, vae, text_encoder, text_encoder_2 = (modules[k] for k in ("unet", "vae", "text_encoder", "text_encoder_2"))
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    dtypes = sorted({str(p.dtype) for module in modules.values() for p in module.parameters()})

    start = time.perf_counter()
    ldm_export.save_sdxl_single_file(modules, cache / SDXL_CHECKPOINT)
    gc.collect()
    timings["save_single_file_s"] = time.perf_counter() - start
    start = time.perf_counter()
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tiny_models.clip_tokenizer(),
        tokenizer_2=tiny_models.clip_tokenizer(pad_token="!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(_config("scheduler_config.json", "sdxl")),
    )
    pipe.save_pretrained(str(cache / SDXL_DIFFUSERS_FOLDER), safe_serialization=True)
    timings["save_diffusers_s"] = time.perf_counter() - start
    result = {
        "format": SDXL_FORMAT,
        "params": params,
        "dtypes": dtypes,
        "timings": timings,
        "peak_rss_bytes": _peak_rss_bytes(),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (cache / SDXL_DONE).write_text(json.dumps(result, indent=1))
    return result


def run_diffusers(cache: Path, size: int, steps: int, cfg: float, seeds, dtype: str, device: str,
                  model: str = "sd15") -> dict:
    start = time.perf_counter()
    import torch
    import diffusers
    from diffusers import EulerDiscreteScheduler

    pipeline_class = getattr(diffusers, PIPELINES.get(model, "StableDiffusionPipeline"))
    imports_s = time.perf_counter() - start
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    start = time.perf_counter()
    pipe = pipeline_class.from_pretrained(
        str(Path(cache) / MODELS[model]["folder"]), torch_dtype=torch_dtype, local_files_only=True,
        **({"text_encoder_3": None, "tokenizer_3": None, "image_encoder": None, "feature_extractor": None}
           if model == "sd35m" else {}),
    )
    if model != "sd35m":  # SD3's own scheduler is already Euler (flow matching)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    runs = []
    for seed in seeds:
        stamps, cpu_stamps = [], []

        def on_step_end(_pipe, _i, _t, kwargs):
            sync()
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())  # CPU seconds of all threads
            return kwargs

        start = time.perf_counter()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=cfg,
            generator=generator,
            callback_on_step_end=on_step_end,
        ).images[0]
        sync()
        total = time.perf_counter() - start
        intervals = [b - a for a, b in zip(stamps, stamps[1:])]
        cpu_intervals = [b - a for a, b in zip(cpu_stamps, cpu_stamps[1:])]
        runs.append(
            {
                "seed": seed,
                "run_s": total,
                "step_intervals": intervals,
                "step_cpu_intervals": cpu_intervals,
                "steps_seen": len(stamps),
            }
        )
    result = {
        "imports_s": imports_s,
        "load_s": load_s,
        "runs": runs,
        "peak_rss_bytes": _peak_rss_bytes(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        result["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return result


def main(argv: list[str]) -> None:
    mode, cache = argv[1], Path(argv[2])
    sys.path.insert(0, str(TESTS_DIR))  # ldm_export, tiny_models, harness
    if mode == "generate":
        model = argv[3] if len(argv) > 3 else "sd15"
        if is_complete(cache, model):  # built before: reuse (the device script calls this unconditionally)
            _emit(json.loads((cache / MODELS[model]["done"]).read_text()))
            return
        if model == "sd35m":  # the IP-Adapter is an add-on with its own marker: adding it keeps the model
            if not dit_bench_model.is_complete(cache):
                dit_bench_model.generate(cache, CONFIGS_ROOT, _peak_rss_bytes)
            sd35m_ip_adapter.ensure(cache, CONFIGS_ROOT)
            _emit(json.loads((cache / MODELS[model]["done"]).read_text()))
        elif model == "flux":
            _emit(flux_bench_model.generate(cache, CONFIGS_ROOT, _peak_rss_bytes))
        else:
            _emit(generate_sdxl(cache) if model == "sdxl" else generate(cache))
    elif mode == "fill":  # the FLUX.1 Fill transformer, only for the `fill` extra
        _emit(flux_bench_model.ensure_fill(cache, CONFIGS_ROOT, _peak_rss_bytes))
    elif mode == "diffusers":
        size, steps, cfg, seed1, seed2, dtype, device = argv[3:10]
        model = argv[10] if len(argv) > 10 else "sd15"
        _emit(run_diffusers(cache, int(size), int(steps), float(cfg), [int(seed1), int(seed2)], dtype, device, model))
    else:
        raise SystemExit(f"unknown mode {mode!r}: generate, fill or diffusers")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv)
