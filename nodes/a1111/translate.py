"""An A1111 request as ComfyUI API-format graphs of the pack's nodes.

One graph per `n_iter` iteration (A1111's "batch count"), each making
`batch_size` images:

    DSLoadModel -> DSTextEncode (positive, negative)
    EmptyLatentImage | LoadImage -> DSVAEEncode           (txt2img | img2img)
    DSSampler [-> DSSampler on the refiner, from refiner_switch_at]
    [-> LatentUpscale | DSVAEDecode -> ImageScale -> DSVAEEncode -> DSSampler]   (hires fix)
    -> DSVAEDecode -> SaveImage (save_images) | PreviewImage (ComfyUI's temp folder)

Seeds follow A1111: image i of the request uses seed + i and variation seed
subseed + i; with a variation strength above 0 every image keeps the main
seed and only the variation seed steps (DSSampler's own rule).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from ..engine.schedulers import (
    A1111_SCHEDULE_LABELS,
    SAMPLER_ALIASES,
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    canonical_name_or_none,
    split_a1111_name,
    supported_schedules,
)
from . import infotext
from .errors import ApiError, not_found, unsupported
from .models import MAX_SIDE, Img2ImgRequest, Txt2ImgRequest

log = logging.getLogger(__name__)

END_AT_LAST_STEP = 10000
RANDOM_SEED_RANGE = 4294967294  # A1111 draws random seeds below this

# Our schedule -> A1111's label (infotext "Schedule type").
SCHEDULE_LABELS = {"normal": "Automatic", "karras": "Karras", "exponential": "Exponential", "beta": "Beta",
                   "sgm_uniform": "SGM Uniform"}

# A1111's latent upscale modes -> ComfyUI LatentUpscale methods.
LATENT_UPSCALERS = {"Latent": "bilinear", "Latent (bicubic)": "bicubic", "Latent (nearest-exact)": "nearest-exact"}
# A1111's plain image upscalers -> ComfyUI ImageScale methods.
IMAGE_UPSCALERS = {"None": "bilinear", "Lanczos": "lanczos", "Nearest": "nearest-exact"}
DEFAULT_HR_UPSCALER = "Latent"

LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")

# A1111's own sampler ids ("k_dpmpp_2m") for the names it shares with us.
A1111_SAMPLER_IDS = {
    "Euler": ["k_euler"], "Euler a": ["k_euler_a"], "Heun": ["k_heun"], "DPM2": ["k_dpm_2"],
    "DPM2 a": ["k_dpm_2_a"], "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "DPM++ 2M SDE Heun": ["k_dpmpp_2m_sde_heun"], "DPM++ 3M SDE": ["k_dpmpp_3m_sde"],
    "DPM++ SDE": ["k_dpmpp_sde"], "DPM++ 2S a": ["k_dpmpp_2s_a"], "DDIM": ["ddim"], "PLMS": ["plms", "PNDM"],
    "LMS": ["k_lms"], "UniPC": ["unipc"], "LCM": ["k_lcm"], "DEIS": ["deis"],
}


@dataclass
class Catalog:
    """What the server offers, by name (from ComfyUI's folders, never a raw path)."""

    models: Sequence[str]
    upscale_models: Sequence[str] = ()
    node_types: Sequence[str] = ()
    store_image: Optional[Callable[[bytes], str]] = None  # PNG bytes -> LoadImage name


@dataclass
class Plan:
    kind: str
    graphs: list[dict]
    output_node: str
    sampler_steps: list[dict[str, int]]  # per graph: DSSampler node id -> its steps
    infotexts: list[str]
    info: dict
    save: bool
    samples_per_graph: int


# ------------------------------------------------------------------- names
def model_stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".sft", ".ckpt"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def resolve_model(name: Optional[str], models: Sequence[str], what: str = "Model") -> str:
    """A listed model for an A1111 name: the listing name, its title with a
    " [hash]" suffix, or its stem. Anything else is a 404."""
    if name is None or name == "":
        if not models:
            raise ApiError(404, "Model not found: ComfyUI's models/checkpoints and models/diffusers hold no model")
        return models[0]
    if not isinstance(name, str):
        raise not_found(what, name, models)
    candidate = re.sub(r"\s*\[[0-9a-fA-F]{8,64}\]$", "", name.strip())
    for model in models:
        if candidate == model:
            return model
    for model in models:
        if candidate in (model_stem(model), model.rsplit("/", 1)[-1]):
            return model
    raise not_found(what, name, models)


def resolve_sampler(name: Optional[str], scheduler: Optional[str]) -> tuple[str, str]:
    """(our sampler, our schedule) for A1111's sampler name and scheduler field."""
    name = name or "Euler"
    sampler_part, schedule_from_name = split_a1111_name(name)
    canonical = canonical_name_or_none(sampler_part)
    if canonical is None:
        lowered = sampler_part.lower()
        for known, ids in A1111_SAMPLER_IDS.items():
            if lowered == known.lower() or lowered in (i.lower() for i in ids):
                canonical = known
                break
    if canonical is None:
        raise ApiError(404, "Sampler not found", body={"sampler_name": name, "available": SAMPLER_NAMES})
    schedule = schedule_from_name or "normal"
    if scheduler:
        schedule = resolve_schedule(scheduler)
    supported = supported_schedules(canonical)
    if schedule not in supported:
        raise unsupported(
            f"sampler {canonical!r} does not support the {SCHEDULE_LABELS.get(schedule, schedule)!r} schedule type; "
            f"it supports {', '.join(SCHEDULE_LABELS.get(s, s) for s in supported)}"
        )
    return canonical, schedule


def schedule_names() -> dict[str, str]:
    """Every accepted spelling -> our schedule (A1111 labels and names, our names)."""
    names = {}
    for label, ours in A1111_SCHEDULE_LABELS.items():
        names[label] = ours
        names[label.lower().replace(" ", "_")] = ours
    for ours in SCHEDULE_TYPES:
        names[ours] = ours
    return names


def resolve_schedule(scheduler: str) -> str:
    names = schedule_names()
    if scheduler in names:
        return names[scheduler]
    lowered = {k.lower(): v for k, v in names.items()}
    if scheduler.lower() in lowered:
        return lowered[scheduler.lower()]
    raise ApiError(404, "Scheduler not found", body={"scheduler": scheduler, "available": list(A1111_SCHEDULE_LABELS)})


# ------------------------------------------------------------------ images
def decode_image(data: Any, field: str):
    """A PIL image from base64 (optionally a data: URL); 422 when it is not one."""
    from PIL import Image

    if not isinstance(data, str) or not data:
        raise ApiError(422, "Invalid encoded image", body={"field": field})
    if data.startswith(("http://", "https://")):
        raise ApiError(422, "Requests not allowed: send the image as base64, not a URL", body={"field": field})
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=False)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ApiError(422, "Invalid encoded image", body={"field": field, "reason": str(exc)[:200]}) from None
    return image


def fit_image(image, width: int, height: int, resize_mode: int):
    """A1111's resize modes: 0 just resize, 1 crop and resize, 2 resize and fill."""
    from PIL import Image

    image = image.convert("RGB")
    if resize_mode == 0 or image.size == (width, height):
        return image.resize((width, height), Image.LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if resize_mode == 1:
        scale = width / image.width if ratio > src_ratio else height / image.height
        w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        resized = image.resize((w, h), Image.LANCZOS)
        left, top = (w - width) // 2, (h - height) // 2
        return resized.crop((left, top, left + width, top + height))
    # resize and fill: fit inside, fill the borders with the stretched picture
    scale = width / image.width if ratio < src_ratio else height / image.height
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    canvas = image.resize((width, height), Image.LANCZOS)
    canvas.paste(image.resize((w, h), Image.LANCZOS), ((width - w) // 2, (height - h) // 2))
    return canvas


def png_bytes(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# ------------------------------------------------------------------- graph
class Graph:
    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id


def _sampler(g: Graph, model: str, pos: str, neg: str, latent: str, *, seed: int, steps: int, cfg: float,
             sampler: str, schedule: str, denoise: float, start: int = 0, end: int = END_AT_LAST_STEP,
             variation_seed: int = 0, variation_strength: float = 0.0) -> str:
    return g.add(
        "DSSampler", model=[model, 0], positive=[pos, 0], negative=[neg, 0], latent_image=[latent, 0],
        seed=seed, steps=steps, cfg=cfg, sampler_name=sampler, schedule=schedule, denoise=denoise,
        start_step=start, end_step=end, variation_seed=variation_seed, variation_strength=variation_strength,
        batch_seed_mode="increment",
    )


def _round8(value: float) -> int:
    return max(64, int(value) // 8 * 8)


@dataclass
class _Settings:
    model: str
    clip_skip: int
    save: bool
    outdir: str


@dataclass
class _Hires:
    width: int
    height: int
    steps: int
    upscaler: str
    model: Optional[str]
    sampler: str
    schedule: str
    prompt: str
    negative: str
    cfg: float
    params: dict = field(default_factory=dict)


def strip_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    loras = []

    def take(match):
        weight = match.group(2)
        try:
            value = float(weight) if weight not in (None, "") else 1.0
        except ValueError:
            raise unsupported(f"<lora:{match.group(1)}:{weight}>: the weight must be a number") from None
        loras.append((match.group(1), value))
        return ""

    return LORA_TAG.sub(take, prompt), loras


def _refuse_unsupported(req, catalog: Catalog, sampler: str) -> None:
    if req.restore_faces:
        raise unsupported(
            "restore_faces: face restoration is not available on this server (GET /sdapi/v1/face-restorers "
            "lists none); send restore_faces false"
        )
    if req.tiling:
        raise unsupported("tiling: seamless tiling is not supported by Diffusers Studio; send tiling false")
    if req.script_name:
        raise ApiError(422, f"Script '{req.script_name}' not found")
    for name in req.alwayson_scripts or {}:
        raise ApiError(422, f"always on script {name} not found")
    if req.seed_resize_from_h > 0 or req.seed_resize_from_w > 0:
        if (req.seed_resize_from_w, req.seed_resize_from_h) != (req.width, req.height):
            raise unsupported("seed_resize_from_w/h: resizing the seed is not supported; send -1")
    sampler_defaults = {"s_churn": (0.0,), "s_tmin": (0.0,), "s_tmax": (0.0, float("inf")), "s_noise": (1.0,),
                        "eta": (0.0, 1.0), "s_min_uncond": (0.0,)}
    for key, allowed in sampler_defaults.items():
        value = getattr(req, key)
        if value is not None and value not in allowed:
            raise unsupported(f"{key}: only the sampler's default is supported ({' or '.join(map(str, allowed))}), got {value}")


def _settings(req, options: dict, catalog: Catalog, kind: str) -> _Settings:
    overrides = dict(req.override_settings or {})
    merged = {**options, **overrides}
    model = resolve_model(merged.get("sd_model_checkpoint"), catalog.models)
    clip_skip = merged.get("CLIP_stop_at_last_layers", 1)
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, (int, float)) or int(clip_skip) != clip_skip \
            or not 1 <= int(clip_skip) <= 12:
        raise unsupported(f"CLIP_stop_at_last_layers must be a whole number from 1 to 12, got {clip_skip!r}")
    vae = merged.get("sd_vae", "Automatic")
    if vae not in (None, "Automatic", "None"):
        raise not_found("VAE", vae, ["Automatic", "None"])
    outdir = options.get(f"outdir_{kind}_samples") or f"a1111/{kind}-images"
    return _Settings(model=model, clip_skip=int(clip_skip), save=bool(req.save_images), outdir=outdir)


def _hires(req: Txt2ImgRequest, catalog: Catalog, sampler: str, schedule: str) -> Optional[_Hires]:
    if not req.enable_hr:
        return None
    if req.hr_resize_x or req.hr_resize_y:
        if req.hr_resize_x and req.hr_resize_y:
            w, h = req.hr_resize_x, req.hr_resize_y
        elif req.hr_resize_x:
            w, h = req.hr_resize_x, req.hr_resize_x * req.height / req.width
        else:
            w, h = req.hr_resize_y * req.width / req.height, req.hr_resize_y
    else:
        w, h = req.width * req.hr_scale, req.height * req.hr_scale
    width, height = _round8(w), _round8(h)
    if width > MAX_SIDE or height > MAX_SIDE:
        raise unsupported(f"hires fix: the upscaled size {width}x{height} exceeds {MAX_SIDE} pixels a side")
    upscaler = req.hr_upscaler or DEFAULT_HR_UPSCALER
    if upscaler not in LATENT_UPSCALERS and upscaler not in IMAGE_UPSCALERS and upscaler not in catalog.upscale_models:
        raise not_found("Upscaler", upscaler, [*LATENT_UPSCALERS, *IMAGE_UPSCALERS, *catalog.upscale_models])
    model = resolve_model(req.hr_checkpoint_name, catalog.models, "Hires checkpoint") \
        if req.hr_checkpoint_name not in (None, "", "Use same checkpoint") else None
    if req.hr_sampler_name not in (None, "", "Use same sampler") or req.hr_scheduler not in (None, "", "Use same scheduler"):
        hr_sampler, hr_schedule = resolve_sampler(
            req.hr_sampler_name if req.hr_sampler_name not in (None, "", "Use same sampler") else sampler,
            req.hr_scheduler if req.hr_scheduler not in (None, "", "Use same scheduler") else None,
        )
        if req.hr_scheduler in (None, "", "Use same scheduler") and schedule in supported_schedules(hr_sampler):
            hr_schedule = schedule if hr_schedule == "normal" else hr_schedule
    else:
        hr_sampler, hr_schedule = sampler, schedule
    steps = req.hr_second_pass_steps or req.steps
    cfg = req.hr_cfg if req.hr_cfg is not None else req.cfg_scale
    params: dict[str, Any] = {}
    if req.hr_resize_x or req.hr_resize_y:
        params["Hires resize"] = f"{width}x{height}"
    else:
        params["Hires upscale"] = req.hr_scale
    params["Hires steps"] = req.hr_second_pass_steps or None
    params["Hires upscaler"] = upscaler
    if model:
        params["Hires checkpoint"] = model_stem(model)
    if hr_sampler != sampler:
        params["Hires sampler"] = hr_sampler
    if hr_schedule != schedule:
        params["Hires schedule type"] = SCHEDULE_LABELS[hr_schedule]
    if cfg != req.cfg_scale:
        params["Hires CFG Scale"] = cfg
    if req.hr_prompt and req.hr_prompt != req.prompt:
        params["Hires prompt"] = req.hr_prompt
    if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt:
        params["Hires negative prompt"] = req.hr_negative_prompt
    return _Hires(width, height, steps, upscaler, model, hr_sampler, hr_schedule,
                  req.hr_prompt or req.prompt, req.hr_negative_prompt or req.negative_prompt, cfg, params)


def _random_seed() -> int:
    return random.randrange(RANDOM_SEED_RANGE)


def build_plan(req, kind: str, options: dict, catalog: Catalog) -> Plan:
    """The graphs, infotexts and info for a validated txt2img or img2img request."""
    sampler, schedule = resolve_sampler(req.sampler_name or req.sampler_index, req.scheduler)
    _refuse_unsupported(req, catalog, sampler)
    settings = _settings(req, options, catalog, kind)
    prompt, loras = strip_lora_tags(req.prompt)
    negative, neg_loras = strip_lora_tags(req.negative_prompt)
    if (loras or neg_loras) and not req.disable_extra_networks:
        if "DSLoadLoRA" not in catalog.node_types:
            raise unsupported(
                f"<lora:...> tags need the Load LoRA node (DSLoadLoRA), which this version of Diffusers Studio "
                f"lacks; remove the tags ({', '.join(n for n, _ in loras + neg_loras)}) or send disable_extra_networks"
            )
        raise unsupported("<lora:...> tags are not wired into the A1111 API yet; remove them")
    if req.styles:
        log.warning("A1111 API: styles %s ignored (the pack has no styles file)", req.styles)

    refiner = None
    if req.refiner_checkpoint not in (None, "", "None") and req.refiner_switch_at is not None \
            and req.refiner_switch_at < 1.0:
        refiner = resolve_model(req.refiner_checkpoint, catalog.models, "Refiner checkpoint")
    hires = _hires(req, catalog, sampler, schedule) if kind == "txt2img" else None

    init_names: list[str] = []
    if kind == "img2img":
        if req.mask:
            if "DSInpaint" not in catalog.node_types:
                raise unsupported("mask: inpainting needs the DSInpaint node, which this version of Diffusers "
                                  "Studio lacks; send the request without a mask")
            raise unsupported("mask: inpainting is not wired into the A1111 API yet; send the request without a mask")
        if not req.init_images:
            raise ApiError(404, "Init image not found")
        if req.resize_mode == 3:
            raise unsupported("resize_mode 3 (just resize, latent upscale) is not supported; use 0, 1 or 2")
        for index, data in enumerate(req.init_images):
            image = fit_image(decode_image(data, f"init_images[{index}]"), req.width, req.height, req.resize_mode)
            if catalog.store_image is None:
                raise RuntimeError("no image store for img2img")
            init_names.append(catalog.store_image(png_bytes(image)))

    seed = _random_seed() if req.seed == -1 else req.seed
    subseed = _random_seed() if req.subseed == -1 else req.subseed
    total = req.batch_size * req.n_iter
    strength = req.subseed_strength
    all_seeds = [seed + (0 if strength > 0 else i) for i in range(total)]
    all_subseeds = [subseed + i for i in range(total)]
    denoise = 1.0 if kind == "txt2img" else float(req.denoising_strength if req.denoising_strength is not None else 0.75)
    switch = None
    if refiner:
        switch = max(1, min(req.steps - 1, int(req.steps * req.refiner_switch_at))) if req.steps > 1 else None
        if switch is None:
            refiner = None

    graphs, sampler_steps = [], []
    output_node = ""
    for k in range(req.n_iter):
        g = Graph()
        steps_of: dict[str, int] = {}
        loader = g.add("DSLoadModel", model_name=settings.model, dtype="auto")
        pos = g.add("DSTextEncode", text_encoder=[loader, 1], text=prompt, clip_skip=settings.clip_skip)
        neg = g.add("DSTextEncode", text_encoder=[loader, 1], text=negative, clip_skip=settings.clip_skip)
        if kind == "txt2img":
            latent = g.add("EmptyLatentImage", width=req.width, height=req.height, batch_size=req.batch_size)
        else:
            picks = [init_names[(k * req.batch_size + j) % len(init_names)] for j in range(req.batch_size)]
            loads = {name: g.add("LoadImage", image=name) for name in dict.fromkeys(picks)}
            if len(loads) == 1 and req.batch_size > 1:
                pixels = g.add("RepeatImageBatch", image=[loads[picks[0]], 0], amount=req.batch_size)
            else:
                pixels = loads[picks[0]]
                for name in picks[1:]:
                    pixels = g.add("ImageBatch", image1=[pixels, 0], image2=[loads[name], 0])
            latent = g.add("DSVAEEncode", vae=[loader, 2], pixels=[pixels, 0], tiled=False, tile_size=512)
        seed_k = seed if strength > 0 else seed + k * req.batch_size
        sub_k = subseed + k * req.batch_size
        common = dict(seed=seed_k, variation_seed=sub_k, variation_strength=strength)
        first = _sampler(g, loader, pos, neg, latent, steps=req.steps, cfg=req.cfg_scale, sampler=sampler,
                         schedule=schedule, denoise=denoise, end=switch or END_AT_LAST_STEP, **common)
        steps_of[first] = req.steps
        out, vae_source = first, loader
        if refiner:
            r_loader = g.add("DSLoadModel", model_name=refiner, dtype="auto")
            r_pos = g.add("DSTextEncode", text_encoder=[r_loader, 1], text=prompt, clip_skip=settings.clip_skip)
            r_neg = g.add("DSTextEncode", text_encoder=[r_loader, 1], text=negative, clip_skip=settings.clip_skip)
            out = _sampler(g, r_loader, r_pos, r_neg, out, steps=req.steps, cfg=req.cfg_scale, sampler=sampler,
                           schedule=schedule, denoise=denoise, start=switch, **common)
            steps_of[out] = req.steps
            vae_source = r_loader
        if hires:
            h_loader = g.add("DSLoadModel", model_name=hires.model, dtype="auto") if hires.model else loader
            if h_loader == loader and hires.prompt == prompt and hires.negative == negative:
                h_pos, h_neg = pos, neg
            else:
                h_pos = g.add("DSTextEncode", text_encoder=[h_loader, 1], text=strip_lora_tags(hires.prompt)[0],
                              clip_skip=settings.clip_skip)
                h_neg = g.add("DSTextEncode", text_encoder=[h_loader, 1], text=strip_lora_tags(hires.negative)[0],
                              clip_skip=settings.clip_skip)
            if hires.upscaler in LATENT_UPSCALERS:
                up = g.add("LatentUpscale", samples=[out, 0], upscale_method=LATENT_UPSCALERS[hires.upscaler],
                           width=hires.width, height=hires.height, crop="disabled")
            else:
                pixels = g.add("DSVAEDecode", vae=[vae_source, 2], samples=[out, 0], tiled=False, tile_size=512)
                if hires.upscaler in catalog.upscale_models:
                    up_model = g.add("UpscaleModelLoader", model_name=hires.upscaler)
                    pixels = g.add("ImageUpscaleWithModel", upscale_model=[up_model, 0], image=[pixels, 0])
                    method = "lanczos"
                else:
                    method = IMAGE_UPSCALERS[hires.upscaler]
                scaled = g.add("ImageScale", image=[pixels, 0], upscale_method=method, width=hires.width,
                               height=hires.height, crop="disabled")
                up = g.add("DSVAEEncode", vae=[h_loader, 2], pixels=[scaled, 0], tiled=False, tile_size=512)
            denoise_hr = float(req.denoising_strength if req.denoising_strength is not None else 0.75)
            out = _sampler(g, h_loader, h_pos, h_neg, up, steps=hires.steps, cfg=hires.cfg, sampler=hires.sampler,
                           schedule=hires.schedule, denoise=denoise_hr, **common)
            steps_of[out] = hires.steps
            vae_source = h_loader
        decoded = g.add("DSVAEDecode", vae=[vae_source, 2], samples=[out, 0], tiled=False, tile_size=512)
        if settings.save:
            output_node = g.add("SaveImage", images=[decoded, 0], filename_prefix=f"{settings.outdir}/{kind}")
        else:
            output_node = g.add("PreviewImage", images=[decoded, 0])
        graphs.append(g.nodes)
        sampler_steps.append(steps_of)

    params_common: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": sampler,
        "Schedule type": SCHEDULE_LABELS[schedule],
        "CFG scale": req.cfg_scale,
        "Size": f"{req.width}x{req.height}",
        "Model": model_stem(settings.model),
        "Variation seed strength": strength if strength > 0 else None,
        "Denoising strength": denoise if kind == "img2img" else (
            (req.denoising_strength if req.denoising_strength is not None else 0.75) if hires else None),
        "Clip skip": settings.clip_skip if settings.clip_skip > 1 else None,
    }
    if hires:
        params_common.update(hires.params)
    if refiner:
        params_common["Refiner"] = model_stem(refiner)
        params_common["Refiner switch at"] = req.refiner_switch_at
    texts = []
    for i in range(total):
        params = dict(params_common)
        params["Seed"] = all_seeds[i]
        if strength > 0:
            params["Variation seed"] = all_subseeds[i]
        texts.append(infotext.build_infotext(prompt, negative, params))
    info = {
        "prompt": prompt,
        "all_prompts": [prompt] * total,
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * total,
        "seed": seed,
        "all_seeds": all_seeds,
        "subseed": subseed,
        "all_subseeds": all_subseeds,
        "subseed_strength": strength,
        "width": req.width,
        "height": req.height,
        "sampler_name": sampler,
        "scheduler": SCHEDULE_LABELS[schedule],
        "cfg_scale": req.cfg_scale,
        "steps": req.steps,
        "batch_size": req.batch_size,
        "restore_faces": bool(req.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": model_stem(settings.model),
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": denoise if kind == "img2img" else (req.denoising_strength if hires else None),
        "extra_generation_params": {k: v for k, v in params_common.items()
                                    if k not in ("Steps", "Sampler", "CFG scale", "Size", "Model") and v is not None},
        "index_of_first_image": 0,
        "infotexts": texts,
        "styles": list(req.styles or []),
        "job_timestamp": "",
        "clip_skip": settings.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": "diffusers-studio",
    }
    return Plan(kind=kind, graphs=graphs, output_node=output_node, sampler_steps=sampler_steps, infotexts=texts,
                info=info, save=settings.save, samples_per_graph=req.batch_size)


def content_name(png: bytes) -> str:
    """The LoadImage name of a stored init image: content-addressed, so the same picture reuses its file."""
    return f"a1111/{hashlib.sha256(png).hexdigest()[:24]}.png"


def apply_infotext(body: dict, model_cls) -> dict:
    """Fill the fields an `infotext` sets, unless the body sets them itself (A1111's rule)."""
    text = body.get("infotext")
    if not isinstance(text, str) or not text.strip():
        return body
    fields = infotext.request_fields_from_infotext(text, model_cls.model_fields)
    merged = dict(body)
    for key, value in fields.items():
        if key == "override_settings":
            merged["override_settings"] = {**value, **(body.get("override_settings") or {})} \
                if isinstance(body.get("override_settings") or {}, dict) else body.get("override_settings")
        elif key not in body:
            merged[key] = value
    return merged


__all__ = ["Catalog", "Plan", "build_plan", "apply_infotext", "content_name", "decode_image",
           "resolve_model", "resolve_sampler", "SAMPLER_ALIASES", "Txt2ImgRequest", "Img2ImgRequest"]
