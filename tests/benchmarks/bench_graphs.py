"""The three graphs the side-by-side benchmark queues on one ComfyUI server.

Each makes the same image from the same weights: Euler, normal schedule,
cfg 7, one image, saved by ComfyUI's SaveImage. `prompt` lets the benchmark
give every queued prompt its own text, so that ComfyUI's cache never skips a
text encoding that diffusers' pipeline redoes on every call.
"""
from __future__ import annotations

CFG = 7.0


def empty_latent(names: dict, size: int) -> dict:
    """ComfyUI's empty latent for the model: 16 channels for SD3 (EmptySD3LatentImage), else 4."""
    class_type = "EmptySD3LatentImage" if names.get("latent") == "sd3" else "EmptyLatentImage"
    return {"class_type": class_type, "inputs": {"width": size, "height": size, "batch_size": 1}}


def _cfg(names: dict) -> float:
    """FLUX.1 is distilled: CFG 1 (no negative pass) in all three ways."""
    return names.get("cfg") or CFG


def _pack_loader(names: dict) -> dict:
    """DSLoadSplitModel for split files (FLUX.1: transformer, CLIP-L + T5, VAE), else DSLoadModel."""
    if names.get("transformer"):
        return {"class_type": "DSLoadSplitModel", "inputs": {
            "transformer_name": names["transformer"], "text_encoder_1": names["clip_l"],
            "text_encoder_2": names["t5"], "text_encoder_3": "none", "vae_name": names["vae"], "dtype": "auto"}}
    return {"class_type": "DSLoadModel", "inputs": {"model_name": names["checkpoint"], "dtype": "auto"}}


def _native_loaders(names: dict) -> tuple:
    """ComfyUI's loader nodes and their (model, clip, vae) outputs: UNETLoader + DualCLIPLoader + VAELoader for
    split files (fp8 files keep their float8 storage: weight_dtype default), else CheckpointLoaderSimple."""
    if names.get("transformer"):
        nodes = {
            "1": {"class_type": "UNETLoader", "inputs": {"unet_name": names["transformer"], "weight_dtype": "default"}},
            "8": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": names["clip_l"], "clip_name2": names["t5"],
                                                             "type": "flux"}},
            "9": {"class_type": "VAELoader", "inputs": {"vae_name": names["vae"]}},
        }
        return nodes, ["1", 0], ["8", 0], ["9", 0]
    nodes = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": names["checkpoint"]}}}
    return nodes, ["1", 0], ["1", 1], ["1", 2]


def _hint_vae(names: dict) -> dict:
    """SD3 ControlNets take their hint as VAE latents: both apply nodes get the checkpoint's VAE (loader output 2)."""
    return {"vae": ["1", 2]} if names.get("latent") == "sd3" else {}


def _chain_controlnets(graph: dict, class_type: str, count: int, positive: list, negative: list, **extra) -> tuple:
    """`count` ControlNet apply nodes in a row (nodes 12, 13, ...) on loader 10 and image 11."""
    for index in range(count):
        node = str(12 + index)
        graph[node] = {
            "class_type": class_type,
            "inputs": {"positive": positive, "negative": negative, "control_net": ["10", 0], "image": ["11", 0],
                       "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, **extra},
        }
        positive, negative = [node, 0], [node, 1]
    return positive, negative


FILL_GUIDANCE = 30.0  # what BFL's Fill examples use
FILL_T5_TOKENS = 256  # ComfyUI's T5 length for Flux; the pack's dev default would be diffusers' 512
REGION_SUFFIX = ", a red vintage car on the left"  # the region's prompt: the base text plus this


def _left_half_mask(graph: dict, size: int) -> list:
    """Node 33: a mask of the left half of the picture (ComfyUI's SolidMask + MaskComposite, in both graphs)."""
    graph["31"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": size, "height": size}}
    graph["32"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": size // 2, "height": size}}
    graph["33"] = {"class_type": "MaskComposite", "inputs": {"destination": ["31", 0], "source": ["32", 0],
                                                             "x": 0, "y": 0, "operation": "add"}}
    return ["33", 0]


def _example_image(graph: dict, size: int) -> list:
    """Node 41: the example picture scaled to the benchmark's size, so an inpaint latent is the empty one's size."""
    graph["40"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
    graph["41"] = {"class_type": "ImageScale", "inputs": {"image": ["40", 0], "upscale_method": "bilinear",
                                                          "width": size, "height": size, "crop": "disabled"}}
    return ["41", 0]


def _pack_ip_adapter(graph: dict, names: dict, model: list, size: int) -> list:
    """DSLoadIPAdapter + DSApplyIPAdapter (weight 0.8, every step) on the example picture: the patched model."""
    graph["50"] = {"class_type": "DSLoadIPAdapter", "inputs": {
        "ipadapter_file": names["ip_adapter"], "clip_vision": names["clip_vision"], "dtype": "auto"}}
    graph["52"] = {"class_type": "DSApplyIPAdapter", "inputs": {
        "model": model, "ip_adapter": ["50", 0], "image": _example_image(graph, size), "weight": 0.8,
        "start_percent": 0.0, "end_percent": 1.0, "weight_mode": "standard"}}
    return ["52", 0]


def pack_graph(names: dict, size: int, steps: int, seed: int, prompt: str = "", lora: bool = False,
               controlnets: int = 0, regional: bool = False, inpaint: bool = False,
               ip_adapter: bool = False, fill: bool = False) -> dict:
    """The pack's graph; the flags add one adapter each (the benchmark's extras), all in one DSSampler pass.
    fill: the FLUX.1 Fill model on the left half, guidance 30, T5 at ComfyUI's 256 tokens (dev's default is 512)."""
    import sd15_worker as w

    prompt = prompt or w.PROMPT
    model, text = ["1", 0], ["1", 1]
    if fill:
        names = dict(names, transformer=names["fill"])
    graph = {"1": _pack_loader(names)}
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
    if ip_adapter:
        model = _pack_ip_adapter(graph, names, model, size)
    graph.update(
        {
            "2": {"class_type": "DSTextEncode", "inputs": {"text_encoder": text, "text": prompt, "clip_skip": 1}},
            "3": {"class_type": "DSTextEncode", "inputs": {"text_encoder": text, "text": w.NEGATIVE, "clip_skip": 1}},
            "4": empty_latent(names, size),
        }
    )
    positive, negative, latent = ["2", 0], ["3", 0], ["4", 0]
    if fill:
        for node in ("2", "3"):
            graph[node]["inputs"]["max_sequence_length"] = FILL_T5_TOKENS
        graph["44"] = {"class_type": "DSFluxGuidance", "inputs": {"conditioning": positive, "guidance": FILL_GUIDANCE}}
        positive = ["44", 0]
    if regional:
        graph["30"] = {"class_type": "DSTextEncode",
                       "inputs": {"text_encoder": text, "text": prompt + REGION_SUFFIX, "clip_skip": 1}}
        graph["34"] = {"class_type": "DSRegionalPrompt", "inputs": {
            "conditioning": positive, "mask": _left_half_mask(graph, size), "region_conditioning": ["30", 0],
            "strength": 1.0}}
        positive = ["34", 0]
    if inpaint or fill:
        graph["42"] = {"class_type": "DSInpaint", "inputs": {
            "image": _example_image(graph, size), "mask": _left_half_mask(graph, size), "vae": ["1", 2],
            "model": model, "grow": 0, "blur": 4.0, "fill": "original", "fill_seed": 0, "blend_unmasked": True,
            "latent_sampling": "sample"}}
        latent = ["42", 0]
    if controlnets:
        graph["10"] = {
            "class_type": "DSLoadControlNet",
            "inputs": {"control_net_name": names["controlnet"], "dtype": "auto"},
        }
        graph["11"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
        positive, negative = _chain_controlnets(graph, "DSApplyControlNet", controlnets, positive, negative,
                                                guess_mode=False, **_hint_vae(names))
    graph.update(
        {
            "5": {
                "class_type": "DSSampler",
                "inputs": {
                    "model": model,
                    "positive": positive,
                    "negative": negative,
                    "latent_image": latent,
                    "seed": seed,
                    "steps": steps,
                    "cfg": _cfg(names),
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


def native_graph(names: dict, size: int, steps: int, seed: int, prompt: str = "", lora: bool = False,
                 controlnets: int = 0, regional: bool = False, inpaint: bool = False, fill: bool = False) -> dict:
    """ComfyUI's own nodes for the same picture; regional: ConditioningSetMask + ConditioningCombine,
    inpaint: VAEEncode + SetLatentNoiseMask (ComfyUI's masked sampling of an ordinary model), fill: the
    FLUX.1 Fill model with FluxGuidance and InpaintModelConditioning."""
    import sd15_worker as w

    prompt = prompt or w.PROMPT
    if fill:
        names = dict(names, transformer=names["fill"])
    graph, model, clip, vae = _native_loaders(names)
    if lora:
        graph["20"] = {
            "class_type": "LoraLoader",
            "inputs": {"model": model, "clip": clip, "lora_name": names["lora"], "strength_model": 1.0, "strength_clip": 1.0},
        }
        model, clip = ["20", 0], ["20", 1]
    graph.update(
        {
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": prompt}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": w.NEGATIVE}},
            "4": empty_latent(names, size),
        }
    )
    positive, negative, latent = ["2", 0], ["3", 0], ["4", 0]
    if regional:
        graph["30"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": prompt + REGION_SUFFIX}}
        graph["34"] = {"class_type": "ConditioningSetMask", "inputs": {
            "conditioning": ["30", 0], "mask": _left_half_mask(graph, size), "strength": 1.0,
            "set_cond_area": "default"}}
        graph["35"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": positive,
                                                                       "conditioning_2": ["34", 0]}}
        positive = ["35", 0]
    if fill:
        graph["44"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": positive, "guidance": FILL_GUIDANCE}}
        graph["45"] = {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["44", 0], "negative": negative, "vae": vae, "pixels": _example_image(graph, size),
            "mask": _left_half_mask(graph, size), "noise_mask": True}}
        positive, negative, latent = ["45", 0], ["45", 1], ["45", 2]
    if inpaint:
        graph["42"] = {"class_type": "VAEEncode", "inputs": {"pixels": _example_image(graph, size), "vae": vae}}
        graph["43"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["42", 0],
                                                                      "mask": _left_half_mask(graph, size)}}
        latent = ["43", 0]
    if controlnets:
        graph["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": names["controlnet"]}}
        graph["11"] = {"class_type": "LoadImage", "inputs": {"image": "example.png"}}
        positive, negative = _chain_controlnets(graph, "ControlNetApplyAdvanced", controlnets, positive, negative,
                                                **_hint_vae(names))
    graph.update(
        {
            "5": {
                "class_type": "KSampler",
                "inputs": {
                    "model": model,
                    "seed": seed,
                    "steps": steps,
                    "cfg": _cfg(names),
                    "sampler_name": "euler",
                    "scheduler": "normal",
                    "positive": positive,
                    "negative": negative,
                    "latent_image": latent,
                    "denoise": 1.0,
                },
            },
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": vae}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench_native"}},
        }
    )
    return graph


def diffusers_graph(names: dict, size: int, steps: int, seed: int, prompt: str = "", *, kind: str = "sd15",
                    dtype: str = "float32") -> dict:
    """diffusers' own pipeline in one node (tests/benchmarks/ds_bench_diffusers), then SaveImage."""
    import sd15_worker as w

    return {
        "1": {
            "class_type": "DSBenchDiffusersPipeline",
            "inputs": {
                "model_folder": names["folder"],
                "kind": kind,
                "dtype": dtype,
                "prompt": prompt or w.PROMPT,
                "negative": w.NEGATIVE,
                "width": size,
                "height": size,
                "steps": steps,
                "cfg": _cfg(names),
                "seed": seed,
            },
        },
        "7": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench_diffusers"}},
    }
