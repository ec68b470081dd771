"""The full-size SD3.5-medium model of the side-by-side benchmark (`DS_BENCH_MODEL=sd35m`).

Built from the configs the pack ships (nodes/engine/configs/sd35_medium and
sd3: MMDiT-X transformer of 2.24 B parameters, CLIP-L and CLIP-G with
projections, the 16-channel VAE) with seeded random weights, created directly
in float16 (no float32 copy ever exists), and saved twice: as a ComfyUI-layout
all-in-one checkpoint (`tests/dit_export.save_all_in_one`, what DSLoadModel
and ComfyUI's CheckpointLoaderSimple read) and as a diffusers folder (what
StableDiffusion3Pipeline reads), plus an SD3 ControlNet of the same width
(`SD3ControlNetModel.from_transformer`: the transformer's first 6 joint
blocks, its embedders, qk-norm and dual attention, and seeded random
`controlnet_blocks` / `pos_embed_input` where diffusers starts them at zero,
so the hint changes the picture), saved as a diffusers-named single file
(what DSLoadControlNet and ComfyUI's ControlNetLoader read). Without T5: SD3 allows it (the pipelines put
zeros in its place, ComfyUI's SD3 text encoder leaves it out), and T5-XXL
alone would be 9.5 GB in float16.

`DS_BENCH_DIT_LAYERS=n` keeps only n joint blocks, n heads wide (Stability's
MMDiT ties the width to the depth, and ComfyUI reads the depth from it): the
same code path at a size a small machine
holds, for a rehearsal of the harness. Its marker records the depth, so a
full-size build is never mistaken for a cut one.
"""
from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

CHECKPOINT = "ds_bench_sd35m_random.safetensors"
FOLDER = "ds_bench_sd35m_random"
CONTROLNET = "ds_bench_sd35m_random_controlnet.safetensors"
CONTROLNET_LAYERS = 6
DONE = "complete_sd35m.json"
FORMAT = 2  # 2: the ControlNet


def layers_wanted(default: int) -> int:
    value = os.environ.get("DS_BENCH_DIT_LAYERS", "").strip()
    return int(value) if value else default


def is_complete(cache: Path, done: str = DONE, format_: int = FORMAT) -> bool:
    """Whether marker `done` records a build of this format and of the depth DS_BENCH_DIT_LAYERS asks for."""
    marker = Path(cache) / done
    if not marker.is_file():
        return False
    try:
        data = json.loads(marker.read_text())
    except ValueError:
        return False
    return data.get("format") == format_ and data.get("layers") == layers_wanted(data.get("layers"))


def _config(configs_root: Path, family: str, name: str) -> dict:
    data = json.loads((configs_root / family / name).read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def transformer_config(configs_root: Path) -> dict:
    """SD3.5 medium's transformer config, cut to DS_BENCH_DIT_LAYERS blocks where that is set."""
    config = _config(configs_root, "sd35_medium", "transformer.json")
    layers = layers_wanted(int(config["num_layers"]))
    if layers != int(config["num_layers"]):
        # Stability's MMDiT ties the width to the depth (64 x depth, 24 heads of 64 for 24 blocks) and
        # ComfyUI reads the depth back from the width: a cut model is narrowed with it.
        config.update(num_layers=layers, num_attention_heads=layers, caption_projection_dim=64 * layers)
        config["dual_attention_layers"] = [i for i in config.get("dual_attention_layers", ()) if i < layers]
    return config


def build(configs_root: Path) -> dict:
    """transformer, vae, text_encoder (CLIP-L), text_encoder_2 (CLIP-G), float16, seeded."""
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = transformer_config(configs_root)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.no_grad():
            torch.manual_seed(0)
            transformer = SD3Transformer2DModel.from_config(config).eval()
            torch.manual_seed(1)
            vae = AutoencoderKL.from_config(_config(configs_root, "sd3", "vae.json")).eval()
            torch.manual_seed(2)
            clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**_config(configs_root, "sd3", "text_encoder.json")))
            torch.manual_seed(3)
            clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**_config(configs_root, "sd3", "text_encoder_2.json")))
    finally:
        torch.set_default_dtype(previous)
    modules = {"transformer": transformer, "vae": vae, "text_encoder": clip_l.eval(), "text_encoder_2": clip_g.eval()}
    with torch.no_grad():
        for module in modules.values():
            module.to(torch.float16)
    return modules


def build_controlnet(transformer):
    """An SD3 ControlNet over `transformer` (float16), its zero-started parts drawn at random (seeded)."""
    import torch
    from diffusers import SD3ControlNetModel

    # The transformer's last block only reads the context (context_pre_only); a ControlNet's blocks all
    # write it, so a cut transformer lends at most its other blocks.
    layers = max(1, min(CONTROLNET_LAYERS, int(transformer.config.num_layers) - 1))
    controlnet = SD3ControlNetModel.from_transformer(transformer, num_layers=layers, num_extra_conditioning_channels=0)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in controlnet.named_parameters():
            if name.startswith(("controlnet_blocks.", "pos_embed_input.")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return controlnet.to(torch.float16).eval()


def generate(cache: Path, configs_root: Path, peak_rss) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    import dit_export
    import tiny_models

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    timings = {}
    start = time.perf_counter()
    modules = build(configs_root)
    timings["build_s"] = time.perf_counter() - start
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    start = time.perf_counter()
    dit_export.save_all_in_one({**modules, "text_encoder_3": None}, cache / CHECKPOINT)
    gc.collect()
    timings["save_single_file_s"] = time.perf_counter() - start
    start = time.perf_counter()
    pipe = StableDiffusion3Pipeline(
        transformer=modules["transformer"],
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(_config(configs_root, "sd35_medium", "scheduler_config.json")),
        vae=modules["vae"],
        text_encoder=modules["text_encoder"],
        tokenizer=tiny_models.clip_tokenizer(),
        text_encoder_2=modules["text_encoder_2"],
        tokenizer_2=tiny_models.clip_tokenizer(pad_token="!"),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(str(cache / FOLDER), safe_serialization=True)
    timings["save_diffusers_s"] = time.perf_counter() - start
    start = time.perf_counter()
    controlnet = build_controlnet(modules["transformer"])
    dit_export.save_controlnet_file(controlnet, cache / CONTROLNET)
    params["controlnet"] = sum(p.numel() for p in controlnet.parameters())
    del controlnet
    timings["controlnet_s"] = time.perf_counter() - start
    return write_marker(cache / DONE, FORMAT, int(modules["transformer"].config.num_layers), params, timings,
                        peak_rss())


def write_marker(marker: Path, format_: int, layers: int, params: dict, timings: dict, peak_rss_bytes: int) -> dict:
    """The finished build's record (what is_complete reads), written last so a broken build is rebuilt."""
    result = {"format": format_, "layers": layers, "params": params, "timings": timings,
              "peak_rss_bytes": peak_rss_bytes, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    marker.write_text(json.dumps(result, indent=1))
    return result
