"""The full-size FLUX.1 model of the side-by-side benchmark (`DS_BENCH_MODEL=flux`), in float8.

FLUX.1's transformer has 11.9 B parameters and its T5-XXL 4.8 B: 66 GB in
float32, 33 GB in bfloat16, more than a 24 GB machine holds. The files
people run on such machines are fp8 (flux1-schnell-fp8, t5xxl_fp8_e4m3fn),
kept one byte per weight in memory and cast per layer as it runs, so the
benchmark is built that way: every tensor of the transformer and of T5 is
`float8_e4m3fn` (norm scales 1.0, exact in float8; the rest seeded normal,
std 0.02), about 17 GB with CLIP-L (float16) and the VAE (float32).

Split files, as BFL and ComfyUI users have them, one copy on disk shared by
all three ways (a second copy of 17 GB would not fit beside the other
benchmark models):

* `ds_bench_flux_random_fp8.safetensors`: the FLUX.1-schnell transformer in
  BFL names (`double_blocks.*`), read by UNETLoader, DSLoadSplitModel and
  diffusers' `FluxTransformer2DModel.from_single_file`;
* `ds_bench_flux_t5xxl_fp8.safetensors`, `ds_bench_flux_clip_l.safetensors`:
  the text encoders in Hugging Face names (what DualCLIPLoader,
  DSLoadSplitModel and transformers read);
* `ds_bench_flux_ae.safetensors`: the VAE in diffusers names;
* `ds_bench_flux_random_lora.safetensors`: a rank-16 LoRA on the double
  blocks' attention in diffusers/peft names (the `lora` extra: DSLoadLoRA
  against LoraLoader);
* `ds_bench_flux_random/`: the diffusers folder of FluxPipeline, whose
  weight files are links to the files above;
* `ds_bench_flux_fill_random_fp8.safetensors`, only when the `fill` extra asks
  for it (12 GB more, with a marker of its own): a FLUX.1-Fill-dev
  transformer (384 input channels, the guidance embedder) in float8, for
  DSLoadSplitModel + DSInpaint against UNETLoader + InpaintModelConditioning.

schnell (no guidance embedder, T5 at 256 tokens in diffusers and in
ComfyUI alike) rather than dev (512 tokens in diffusers, 256 in ComfyUI): the
three ways then do the same work per step.

`DS_BENCH_DIT_LAYERS=n` keeps n double and n single blocks and n T5 layers,
at full width: the same code paths at a size a rehearsal can afford.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import dit_bench_model
from dit_bench_model import _config, layers_wanted

TRANSFORMER = "ds_bench_flux_random_fp8.safetensors"
T5 = "ds_bench_flux_t5xxl_fp8.safetensors"
CLIP_L = "ds_bench_flux_clip_l.safetensors"
VAE = "ds_bench_flux_ae.safetensors"
LORA = "ds_bench_flux_random_lora.safetensors"
LORA_RANK = 16
FOLDER = "ds_bench_flux_random"
DONE = "complete_flux.json"
FORMAT = 3  # 2: all 38 single blocks (1 had 19); 3: the LoRA
FILL = "ds_bench_flux_fill_random_fp8.safetensors"
FILL_DONE = "complete_flux_fill.json"
FILL_FORMAT = 1
STD = 0.02


def is_complete(cache: Path) -> bool:
    return dit_bench_model.is_complete(cache, DONE, FORMAT)


def _random_float8(shapes: dict, seed: int) -> dict:
    """{name: float8 tensor} for {name: shape}: norm scales (`scale`, layer norms) 1.0, the rest N(0, STD)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        if name.endswith(".scale") or "layer_norm" in name:
            value = torch.ones(shape)
        else:
            value = torch.randn(shape, generator=generator) * STD
        out[name] = value.to(torch.float8_e4m3fn)
    return out


def transformer_shapes(configs_root: Path, layers: int, variant: str = "flux_schnell") -> tuple:
    """(config, {BFL name: shape}) of a FLUX.1 transformer (`variant`: its config folder), from a model on the
    meta device.

    layers: 0 for the full model, else n double and n single blocks."""
    import torch
    from diffusers import FluxTransformer2DModel

    import dit_export

    config = _config(configs_root, variant, "transformer.json")
    if layers:  # a cut rehearsal: n double and n single blocks
        config.update(num_layers=min(layers, config["num_layers"]),
                      num_single_layers=min(layers, config["num_single_layers"]))
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config)
    return config, {k: tuple(v.shape) for k, v in dit_export.transformer_original(transformer).items()}


def t5_shapes(configs_root: Path, layers: int) -> tuple:
    """(config, {name: shape}) of T5-XXL's encoder as t5xxl files hold it (`shared.weight` once)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    config = _config(configs_root, "flux", "text_encoder_2.json")
    if layers:
        config["num_layers"] = min(layers, config["num_layers"])
    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**config))
    shapes = {k: tuple(v.shape) for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return config, shapes


def lora_tensors(config: dict, seed: int = 5) -> dict:
    """A rank-16 LoRA in diffusers/peft names on the double blocks' attention (q, k, v, out of both streams).

    Only the double blocks: a LoRA on the single blocks touches their fused
    linear1 (q, k, v and the MLP, 4.3 B weights), and ComfyUI keeps a backup
    copy of every weight a LoRA patches, which would not fit beside the model
    here. lora_B is drawn at random too (peft starts it at zero), so the LoRA
    changes the picture."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config)
    layers = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
              "attn.add_v_proj", "attn.to_add_out")
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in transformer.named_modules():
        parts = name.split(".", 2)
        if parts[0] == "transformer_blocks" and len(parts) == 3 and parts[2] in layers:
            down = torch.randn(LORA_RANK, module.in_features, generator=generator) / module.in_features ** 0.5
            up = torch.randn(module.out_features, LORA_RANK, generator=generator) * STD
            out[f"transformer.{name}.lora_A.weight"] = down.to(torch.float16)
            out[f"transformer.{name}.lora_B.weight"] = up.to(torch.float16)
    return out


def _save(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def _write_random(shapes: dict, seed: int, path: Path) -> tuple:
    """Random float8 tensors of `shapes` written to `path`: (parameters, seconds)."""
    import gc

    start = time.perf_counter()
    tensors = _random_float8(shapes, seed)
    count = sum(t.numel() for t in tensors.values())
    _save(tensors, path)
    del tensors
    gc.collect()
    return count, time.perf_counter() - start


def _small_modules(configs_root: Path):
    """CLIP-L (float16) and the 16-channel VAE (float32), seeded, at full size (0.2 B parameters together)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(2)
    clip = CLIPTextModel(CLIPTextConfig(**_config(configs_root, "flux", "text_encoder.json"))).eval()
    torch.manual_seed(1)
    vae = AutoencoderKL.from_config(_config(configs_root, "flux", "vae.json")).eval()
    return clip.to(torch.float16), vae


def _folder(cache: Path, configs_root: Path, transformer_config: dict, t5_config: dict, clip, vae) -> None:
    """FluxPipeline's folder: configs, tokenizers, scheduler; weights linked to the split files."""
    import dit_tiny
    import tiny_models

    root = cache / FOLDER
    parts = {
        "transformer": ({**transformer_config, "_class_name": "FluxTransformer2DModel"}, "config.json",
                        TRANSFORMER, "diffusion_pytorch_model.safetensors"),
        "text_encoder_2": ({**t5_config, "architectures": ["T5EncoderModel"]}, "config.json", T5, "model.safetensors"),
        "text_encoder": (None, None, CLIP_L, "model.safetensors"),
        "vae": (None, None, VAE, "diffusion_pytorch_model.safetensors"),
    }
    for sub, (config, config_name, target, link_name) in parts.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        if config is not None:
            (root / sub / config_name).write_text(json.dumps(config, indent=1))
        link = root / sub / link_name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(cache / target)
    clip.config.to_json_file(str(root / "text_encoder" / "config.json"))
    vae.save_config(str(root / "vae"))
    (root / "scheduler").mkdir(exist_ok=True)
    scheduler = {**_config(configs_root, "flux_schnell", "scheduler_config.json"),
                 "_class_name": "FlowMatchEulerDiscreteScheduler"}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=1))
    tiny_models.clip_tokenizer().save_pretrained(str(root / "tokenizer"))
    dit_tiny.t5_tokenizer().save_pretrained(str(root / "tokenizer_2"))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None], "feature_extractor": [None, None],
    }, indent=1))


def generate(cache: Path, configs_root: Path, peak_rss) -> dict:
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    timings, params = {}, {}
    transformer_config, shapes = transformer_shapes(configs_root, layers_wanted(0))
    params["transformer"], timings["transformer_s"] = _write_random(shapes, 0, cache / TRANSFORMER)
    t5_config, shapes = t5_shapes(configs_root, layers_wanted(0))
    params["t5"], timings["t5_s"] = _write_random(shapes, 3, cache / T5)
    start = time.perf_counter()
    lora = lora_tensors(transformer_config)
    params["lora"] = sum(t.numel() for t in lora.values())
    _save(lora, cache / LORA)
    clip, vae = _small_modules(configs_root)
    _save({k: v.contiguous() for k, v in clip.state_dict().items()}, cache / CLIP_L)
    _save({k: v.contiguous() for k, v in vae.state_dict().items()}, cache / VAE)
    params.update(clip_l=sum(p.numel() for p in clip.parameters()), vae=sum(p.numel() for p in vae.parameters()))
    _folder(cache, configs_root, transformer_config, t5_config, clip, vae)
    timings["small_and_folder_s"] = time.perf_counter() - start
    return dit_bench_model.write_marker(cache / DONE, FORMAT, int(transformer_config["num_layers"]), params, timings,
                                        peak_rss())


def ensure_fill(cache: Path, configs_root: Path, peak_rss) -> dict:
    """The FLUX.1-Fill-dev transformer in float8 (same seeds' scheme, its own marker), built once."""
    cache = Path(cache)
    if dit_bench_model.is_complete(cache, FILL_DONE, FILL_FORMAT):
        return json.loads((cache / FILL_DONE).read_text())
    config, shapes = transformer_shapes(configs_root, layers_wanted(0), "flux_fill")
    count, seconds = _write_random(shapes, 7, cache / FILL)
    return dit_bench_model.write_marker(cache / FILL_DONE, FILL_FORMAT, int(config["num_layers"]),
                                        {"fill_transformer": count}, {"fill_s": seconds}, peak_rss())
