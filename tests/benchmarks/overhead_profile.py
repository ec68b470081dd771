"""Python calls per denoising step and per run: the pack's nodes against diffusers' pipeline.

Time on this shared CPU drifts by more than the difference being looked for
(issue 16); the number of Python function calls a run makes does not. This
counts them with cProfile (builtins included) for the same txt2img run done
two ways on models of the same architecture and weights:

- diffusers: `StableDiffusion[XL]Pipeline.from_pretrained(folder)` called as
  its docs show (prompt, negative prompt, steps, guidance);
- the pack: DSLoadModel (loaded before counting), DSTextEncode twice,
  DSSampler, DSVAEDecode, as ComfyUI calls their `execute`.

Each is counted at two step counts after a warm-up run; the slope is the
calls per step and the intercept the calls of everything else (text
encoding, VAE decode, set-up). Python call counts depend on the topology
(how many blocks and layers), not on the widths, so the "small" models keep
the real SD1.5 / SDXL block structure (nodes/engine/configs) at widths of
32-64: the counts are those of the full-size models, in seconds.

    COMFYUI_PATH=... python tests/benchmarks/overhead_profile.py [sd15|sdxl|tiny-sd15 ...]

tests/nodes/test_per_step_overhead.py asserts the per-step ratio on the tiny
models; docs/benchmark.md ("Where the time goes") records the figures.
"""
from __future__ import annotations

import cProfile
import json
import os
import pstats
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parent
REPO_ROOT = TESTS_DIR.parent
CONFIGS_ROOT = REPO_ROOT / "nodes" / "engine" / "configs"

PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
NEGATIVE = "blurry, low quality"
SIZE = 64
CFG = 7.0
SAMPLER = "Euler"
STEPS = (2, 4)


@dataclass(frozen=True)
class Counts:
    """Python calls of one way: per denoising step (slope) and outside the loop (intercept)."""

    per_step: float
    fixed: float


def count_calls(fn) -> int:
    """Python function calls (builtins included) that `fn()` makes, by cProfile."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        fn()
    finally:
        profile.disable()
    return pstats.Stats(profile).total_calls


def slope_and_intercept(run, steps: tuple = STEPS) -> Counts:
    """Count `run(steps)` at two step counts after a warm-up (first-call caches, lazy imports)."""
    run(steps[0])
    low, high = (count_calls(lambda n=n: run(n)) for n in steps)
    per_step = (high - low) / (steps[1] - steps[0])
    return Counts(per_step, low - per_step * steps[0])


# ------------------------------------------------------------------ the models
def _config(family: str, name: str, **narrow) -> dict:
    data = json.loads((CONFIGS_ROOT / family / name).read_text())
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    data.update(narrow)
    return data


def _text_encoder(family: str, name: str, cls):
    from transformers import CLIPTextConfig

    config = _config(family, name, hidden_size=32, intermediate_size=37, num_attention_heads=4, projection_dim=32)
    return cls(CLIPTextConfig(**config))


def small_pipeline(model: str, seed: int = 0):
    """A diffusers pipeline with the real SD1.5 or SDXL block structure, 32-64 channels wide."""
    import torch
    from diffusers import (AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    import tiny_models

    family = "sd1" if model == "sd15" else "sdxl"
    torch.manual_seed(seed)
    vae = AutoencoderKL(**_config(family, "vae.json", block_out_channels=[32, 32, 32, 32]))
    if family == "sd1":
        unet = UNet2DConditionModel(**_config(family, "unet.json", block_out_channels=[32, 32, 64, 64],
                                              cross_attention_dim=32))
        text_encoder = _text_encoder(family, "text_encoder.json", CLIPTextModel)
        return StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tiny_models.clip_tokenizer(),
            scheduler=tiny_models.tiny_scheduler(), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
    unet = UNet2DConditionModel(**_config(
        family, "unet.json", block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4],
        cross_attention_dim=64, addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
    ))
    return StableDiffusionXLPipeline(
        unet=unet, vae=vae, scheduler=tiny_models.tiny_scheduler(),
        text_encoder=_text_encoder(family, "text_encoder.json", CLIPTextModel),
        tokenizer=tiny_models.clip_tokenizer(),
        text_encoder_2=_text_encoder(family, "text_encoder_2.json", CLIPTextModelWithProjection),
        tokenizer_2=tiny_models.clip_tokenizer(pad_token="!"),
    )


def tiny_pipeline(model: str, seed: int = 0):
    """The tests' tiny models (tests/tiny_models.py)."""
    import tiny_models

    return tiny_models.sdxl_pipeline(seed) if model == "tiny-sdxl" else tiny_models.sd1_pipeline(seed)


def save_model(model: str, diffusers_root: Path) -> Path:
    """The model as a diffusers folder under `diffusers_root` (what both ways load)."""
    pipe = tiny_pipeline(model) if model.startswith("tiny-") else small_pipeline(model)
    path = diffusers_root / f"ds-overhead-{model}"
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


# -------------------------------------------------------------------- the runs
def diffusers_run(folder: Path):
    """`run(steps)` for diffusers' own pipeline loaded from `folder`."""
    import torch
    from diffusers import DiffusionPipeline

    from diffusers_studio.nodes.engine.schedulers import make_scheduler

    pipe = DiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32, local_files_only=True)
    pipe.scheduler = make_scheduler(dict(pipe.scheduler.config), SAMPLER, "normal")
    pipe.set_progress_bar_config(disable=True)

    def run(steps: int):
        with torch.no_grad():
            return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=CFG,
                        height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(0), output_type="np").images

    return run


def pack_run(folder_name: str):
    """`run(steps)` for the pack's nodes, the model loaded by DSLoadModel from models/diffusers."""
    import torch

    from diffusers_studio.nodes.encode import DSTextEncode
    from diffusers_studio.nodes.loaders import DSLoadModel
    from diffusers_studio.nodes.sample import DSSampler
    from diffusers_studio.nodes.vae import DSVAEDecode

    model, text_encoder, vae = DSLoadModel.execute(folder_name, "float32").args

    def run(steps: int):
        positive = DSTextEncode.execute(text_encoder, PROMPT, 1).args[0]
        negative = DSTextEncode.execute(text_encoder, NEGATIVE, 1).args[0]
        latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
        out = DSSampler.execute(model, positive, negative, latent, 0, steps, CFG, SAMPLER, "normal", 1.0).args[0]
        return DSVAEDecode.execute(vae, out).args[0]

    return run


def compare(model: str, diffusers_root: Path) -> dict[str, Counts]:
    """Counts for both ways on `model`, saved under `diffusers_root` (registered with folder_paths)."""
    folder = save_model(model, diffusers_root)
    return {
        "diffusers": slope_and_intercept(diffusers_run(folder)),
        "pack": slope_and_intercept(pack_run(folder.name)),
    }


def table(results: dict[str, dict[str, Counts]]) -> str:
    lines = ["| model | way | Python calls per step | calls outside the loop | per step, pack/diffusers |",
             "|---|---|---|---|---|"]
    for model, ways in results.items():
        base = ways["diffusers"].per_step
        for way, c in ways.items():
            lines.append(f"| {model} | {way} | {c.per_step:.0f} | {c.fixed:.0f} | {c.per_step / base:.3f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ standalone
def setup_comfy(models_root: Path) -> Path:
    """ComfyUI importable (CPU), the pack as `diffusers_studio`, models/diffusers under `models_root`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        sys.exit("COMFYUI_PATH is not set (ENV=$(bash scripts/env_path.sh); COMFYUI_PATH=$ENV/comfyui)")
    for path in (root, str(TESTS_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import torch
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
    import conftest  # noqa: F401  (tests/conftest.py registers the pack as diffusers_studio)
    import folder_paths

    diffusers_root = models_root / "diffusers"
    diffusers_root.mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("diffusers", str(diffusers_root), is_default=True)
    folder_paths.filename_list_cache.clear()
    return diffusers_root


def main(models: list[str]) -> None:
    import torch

    torch.set_num_threads(1)  # the counts do not depend on it; the shared machine does
    with tempfile.TemporaryDirectory() as tmp:
        diffusers_root = setup_comfy(Path(tmp))
        results = {model: compare(model, diffusers_root) for model in models}
    print(table(results))


if __name__ == "__main__":
    main(sys.argv[1:] or ["sd15", "sdxl"])
