"""Out-of-process work for the SD1.5 benchmark: build the random model, run diffusers.

Run as a script so that each job has a process of its own: the model
generation's memory is returned to the OS when it ends, and the diffusers
run's peak resident memory (`ru_maxrss`) is its own, comparable with the
ComfyUI server process's.

    python sd15_worker.py generate CACHE_DIR
    python sd15_worker.py diffusers CACHE_DIR SIZE STEPS CFG SEED1 SEED2 DTYPE DEVICE

Both print one JSON line (prefixed `RESULT `) on stdout.

The model is a full-size SD1.5 architecture (the configs the pack bundles under
nodes/engine/configs/sd1/) with seeded random weights, stored as float16:
a single-file LDM checkpoint (what DSLoadModel and CheckpointLoaderSimple
read), the same weights as a diffusers folder (what StableDiffusionPipeline
reads), a kohya-format LoRA and an LDM-format ControlNet of full size.
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
CONFIGS = REPO_ROOT / "nodes" / "engine" / "configs" / "sd1"

CHECKPOINT = "ds_bench_sd15_random.safetensors"
DIFFUSERS_FOLDER = "ds_bench_sd15_random"
LORA = "ds_bench_sd15_random_lora.safetensors"
CONTROLNET = "ds_bench_sd15_random_controlnet.safetensors"
DONE = "complete.json"
FORMAT = 1  # bump when the files' content changes

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"


def _config(name: str) -> dict:
    data = json.loads((CONFIGS / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _emit(payload: dict) -> None:
    sys.stdout.write("RESULT " + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def is_complete(cache: Path) -> bool:
    marker = Path(cache) / DONE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format") == FORMAT
    except ValueError:
        return False


def generate(cache: Path) -> dict:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(TESTS_DIR))
    import ldm_export
    import tiny_models
    from harness import models_controlnet, models_lora

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(_config("unet.json")).eval()
    torch.manual_seed(1)
    vae = AutoencoderKL.from_config(_config("vae.json")).eval()
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**_config("text_encoder.json"))).eval()
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


def run_diffusers(cache: Path, size: int, steps: int, cfg: float, seeds, dtype: str, device: str) -> dict:
    start = time.perf_counter()
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    imports_s = time.perf_counter() - start
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(
        str(Path(cache) / DIFFUSERS_FOLDER), torch_dtype=torch_dtype, local_files_only=True
    )
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
    if mode == "generate":
        _emit(generate(cache))
    elif mode == "diffusers":
        size, steps, cfg, seed1, seed2, dtype, device = argv[3:10]
        _emit(run_diffusers(cache, int(size), int(steps), float(cfg), [int(seed1), int(seed2)], dtype, device))
    else:
        raise SystemExit(f"unknown mode {mode!r}: generate or diffusers")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv)
