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

from ..engine.families import CONTROLNET, INPAINT, LORA
from ..engine.families.flux import DEFAULT_GUIDANCE
from ..engine.prompt_schedule import has_editing
from ..engine.schedulers import (
    A1111_SCHEDULE_LABELS,
    SAMPLER_ALIASES,
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    canonical_name_or_none,
    split_a1111_name,
    supported_schedules,
)
from . import extras, infotext, listings, scripts, styles
from .errors import ApiError, not_found, unsupported
from .models import MAX_SIDE, Img2ImgRequest, Txt2ImgRequest
from .options import AESTHETIC_SCORE_KEYS, OptionError, check_value
from .options import DEFAULTS as OPTION_DEFAULTS

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

LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^>]*))?>")

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
    loras: Sequence[str] = ()
    controlnets: Sequence[str] = ()
    face_restorers: Sequence[str] = ()  # files in models/facerestore_models
    face_detectors: Sequence[str] = ()  # files in models/facedetection
    codeformer_available: bool = True  # spandrel can load CodeFormer (spandrel_extra_arches installed)
    styles: dict = field(default_factory=dict)  # name -> styles.Style (styles.csv)
    # model name -> its engine Family (read from the file's header), None when unknown
    model_family: Optional[Callable[[str], Optional[Any]]] = None


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


def _ref(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value, 0]


def _sampler(g: Graph, model, pos, neg, latent, *, seed: int, steps: int, cfg: float,
             sampler: str, schedule: str, denoise: float, start: int = 0, end: int = END_AT_LAST_STEP,
             variation_seed: int = 0, variation_strength: float = 0.0) -> str:
    """A DSSampler node."""
    return g.add(
        "DSSampler", model=_ref(model), positive=_ref(pos), negative=_ref(neg), latent_image=_ref(latent),
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
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    old_timelines: bool = False  # A1111's use_old_scheduling


def _encode(g: Graph, text_encoder, text: str, settings: _Settings, first_pass_steps: int = 0) -> str:
    """A DSTextEncode node; the prompt-editing inputs only where they differ from the defaults."""
    extra: dict[str, Any] = {}
    if first_pass_steps and has_editing(text):
        extra["first_pass_steps"] = first_pass_steps
    if settings.old_timelines and has_editing(text):
        extra["old_prompt_editing_timelines"] = True
    return g.add("DSTextEncode", text_encoder=_ref(text_encoder), text=text, clip_skip=settings.clip_skip, **extra)


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


def strip_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float, float]]]:
    """The prompt without its <lora:...> tags, and (name, text-encoder weight, UNet weight) per tag.

    A1111's syntax: `<lora:name>`, `<lora:name:w>` (both weights), `<lora:name:te:unet>`, and the named
    forms `te=`, `unet=` (`dyn=` is accepted and ignored: the pack has no dynamic-rank LoRAs)."""
    loras = []

    def take(match):
        name, rest = match.group(1), match.group(2)
        positional, named = [], {}
        for part in (rest.split(":") if rest else []):
            part = part.strip()
            if "=" in part:
                key, _, value = part.partition("=")
                named[key.strip().lower()] = value.strip()
            elif part:
                positional.append(part)
        try:
            te = float(named.get("te", positional[0] if positional else 1.0))
            unet = float(named.get("unet", positional[1] if len(positional) > 1 else te))
        except ValueError:
            raise unsupported(f"<lora:{name}:{rest}>: the weights must be numbers") from None
        loras.append((name, te, unet))
        return ""

    return LORA_TAG.sub(take, prompt), loras


def wants_faces(req, options: dict) -> bool:
    """restore_faces, or A1111's `face_restoration` option when the request leaves it out (null)."""
    if req.restore_faces is not None:
        return bool(req.restore_faces)
    merged = {**options, **(req.override_settings or {})}
    return merged.get("face_restoration") is True


def _refuse_unsupported(req, catalog: Catalog, sampler: str, options: Optional[dict] = None) -> None:
    if wants_faces(req, options or {}):
        reason = listings.restore_faces_refusal(catalog.face_restorers, catalog.face_detectors)
        if reason:
            raise unsupported(reason)
    for name in req.alwayson_scripts or {}:
        if name.lower() == "controlnet":
            continue
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
    high, low = (_aesthetic_score(merged, key) for key in AESTHETIC_SCORE_KEYS)
    old_timelines = merged.get("use_old_scheduling", False)
    if not isinstance(old_timelines, bool):
        raise unsupported(f"use_old_scheduling must be true or false, got {old_timelines!r}")
    return _Settings(model=model, clip_skip=int(clip_skip), save=bool(req.save_images), outdir=outdir,
                     aesthetic_score=high, negative_aesthetic_score=low, old_timelines=old_timelines)


def _family(catalog: Catalog, model: str):
    """The engine Family of a catalog model, None when the catalog cannot tell."""
    return catalog.model_family(model) if catalog.model_family is not None else None


def _refuse_for_family(family, req, sampler: str, loras: list) -> None:
    """A request asking the model's family for what it cannot do: 422 naming it, before anything runs.

    The family says which samplers apply and which adapters it refuses
    (SD3 and Flux: flow-matching samplers only; LoRA tags, ControlNet and inpainting apply).
    """
    if family is None:
        return
    if family.sampler_names and sampler not in family.sampler_names:
        raise unsupported(
            f"sampler_name: {sampler!r} does not apply to {family.label}, a flow-matching model: "
            f"use one of {', '.join(family.sampler_names)}"
        )
    asked = [
        (LORA, bool(loras), "<lora:...> tags"),
        (INPAINT, bool(getattr(req, "mask", None)), "mask (inpainting)"),
        (CONTROLNET, any(k.lower() == "controlnet" for k in (req.alwayson_scripts or {})), "alwayson_scripts.controlnet"),
    ]
    for kind, wanted, field_name in asked:
        reason = family.adapter_refusal(kind) if wanted else None
        if reason:
            raise unsupported(f"{field_name}: {reason}; send the request without it")


def _guided(g: Graph, family, pos: str, req) -> str:
    """Flux dev's distilled guidance on the positive prompt (Forge's distilled_cfg_scale), where the model has one."""
    if not getattr(family, "guidance_embedding", False):
        return pos
    guidance = req.distilled_cfg_scale if req.distilled_cfg_scale is not None else DEFAULT_GUIDANCE
    return g.add("DSFluxGuidance", conditioning=_ref(pos), guidance=guidance)


def _takes_aesthetic_score(catalog: Catalog, model: str) -> bool:
    """Whether the A1111 refiner checkpoint is an SDXL refiner (A1111 lets any model refine; only
    the SDXL refiner takes the aesthetic-score options, the others ignore them there)."""
    family = catalog.model_family(model) if catalog.model_family is not None else None
    return bool(getattr(family, "aesthetic_score", False))


def _aesthetic_score(merged: dict, key: str) -> float:
    """A refiner aesthetic-score option, checked as POST /options checks it (an override may carry any value)."""
    try:
        return check_value(key, merged.get(key, OPTION_DEFAULTS[key]))
    except OptionError as exc:
        raise unsupported(str(exc)) from None


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


def _seamless(g: Graph, tiling: Optional[bool], model, vae) -> tuple[list, list]:
    """(model, vae) refs, through DSSeamlessTiling when the request asks for `tiling`."""
    if not tiling:
        return _ref(model), _ref(vae)
    node = g.add("DSSeamlessTiling", model=_ref(model), vae=_ref(vae), axes="both")
    return [node, 0], [node, 1]


@dataclass
class _Faces:
    """restore_faces: the files DSRestoreFaces uses and CodeFormer's weight."""

    restorer: str
    detector: str
    weight: float

    @property
    def label(self) -> str:
        return listings.face_restorer_name(self.restorer)

    def add(self, g: Graph, images) -> str:
        """A DSRestoreFaces node after `images`, with A1111's detection settings (txt2img shows it fully)."""
        return g.add("DSRestoreFaces", image=_ref(images), restorer_name=self.restorer, detector_name=self.detector,
                     codeformer_weight=self.weight, visibility=1.0, confidence=0.97, detection_size=640)


def _face_restoration(req, options: dict, catalog: Catalog) -> Optional[_Faces]:
    """The restorer the options name (face_restoration_model, code_former_weight; override_settings
    first), or None without restore_faces. What is missing was refused before (_refuse_unsupported)."""
    if not wants_faces(req, options):
        return None
    extras.check_node_types(catalog.node_types, ["DSRestoreFaces"], "restore_faces")
    merged = {**options, **(req.override_settings or {})}
    try:
        weight = check_value("code_former_weight", merged.get("code_former_weight", OPTION_DEFAULTS["code_former_weight"]))
        wanted = check_value("face_restoration_model",
                             merged.get("face_restoration_model", OPTION_DEFAULTS["face_restoration_model"]))
        usable = [f for f in catalog.face_restorers
                  if catalog.codeformer_available or listings.face_restorer_name(f) != "CodeFormer"]
        if not usable:
            raise ValueError(f"restore_faces: {', '.join(catalog.face_restorers)} is CodeFormer. "
                             f"{listings.CODEFORMER_HINT}")
        restorer = listings.pick_restorer(usable, wanted)
    except ValueError as exc:
        raise unsupported(str(exc)) from None
    return _Faces(restorer, listings.pick_detector(catalog.face_detectors), weight)


def _output(g: Graph, images: str, settings: _Settings, kind: str) -> str:
    """SaveImage (save_images) or PreviewImage (ComfyUI's temp folder) for the graph's pictures."""
    if settings.save:
        return g.add("SaveImage", images=[images, 0], filename_prefix=f"{settings.outdir}/{kind}")
    return g.add("PreviewImage", images=[images, 0])


def _random_seed() -> int:
    return random.randrange(RANDOM_SEED_RANGE)


def build_plan(req, kind: str, options: dict, catalog: Catalog) -> Plan:
    """The graphs, infotexts and info for a validated txt2img or img2img request."""
    sampler, schedule = resolve_sampler(req.sampler_name or req.sampler_index, req.scheduler)
    _refuse_unsupported(req, catalog, sampler, options)
    upscale_script = scripts.parse(req.script_name, req.script_args, kind, catalog.upscale_models)
    if upscale_script is not None:
        scripts.check_request(req, upscale_script)
    if req.tiling:
        extras.check_node_types(catalog.node_types, ["DSSeamlessTiling"], "tiling")
    settings = _settings(req, options, catalog, kind)
    faces = _face_restoration(req, options, catalog)
    try:
        styled, styled_negative = styles.apply_styles(req.prompt, req.negative_prompt, req.styles or [],
                                                      catalog.styles)
    except ValueError as exc:
        raise unsupported(str(exc)) from None
    prompt, loras = strip_lora_tags(styled)
    negative, neg_loras = strip_lora_tags(styled_negative)
    lora_list: list[tuple[str, float, float]] = []
    if (loras or neg_loras) and not req.disable_extra_networks:
        extras.check_node_types(catalog.node_types, ["DSLoadLoRA"], "<lora:...> tags")
        lora_list = extras.resolve_loras(loras + neg_loras, catalog.loras)

    family = _family(catalog, settings.model)
    _refuse_for_family(family, req, sampler, lora_list)

    refiner = None
    if req.refiner_checkpoint not in (None, "", "None") and req.refiner_switch_at is not None \
            and req.refiner_switch_at < 1.0:
        refiner = resolve_model(req.refiner_checkpoint, catalog.models, "Refiner checkpoint")
    hires = _hires(req, catalog, sampler, schedule) if kind == "txt2img" else None
    hires_loras: list[tuple[str, float, float]] = []
    if hires and not req.disable_extra_networks:
        h_tags = strip_lora_tags(hires.prompt)[1] + strip_lora_tags(hires.negative)[1]
        if h_tags:
            extras.check_node_types(catalog.node_types, ["DSLoadLoRA"], "<lora:...> tags")
            hires_loras = extras.resolve_loras(h_tags, catalog.loras)

    def store(image, field: str, resize_mode: int, size: Optional[tuple[int, int]] = None) -> str:
        if catalog.store_image is None:
            raise RuntimeError("no image store for the A1111 API")
        w, h = size or (req.width, req.height)
        return catalog.store_image(png_bytes(fit_image(image, w, h, resize_mode)))

    init_names: list[str] = []
    mask_name: Optional[str] = None
    full_res = False
    blur = 0.0
    if kind == "img2img":
        if not req.init_images:
            raise ApiError(404, "Init image not found")
        if req.resize_mode == 3:
            raise unsupported("resize_mode 3 (just resize, latent upscale) is not supported; use 0, 1 or 2")
        decoded_inits = [decode_image(data, f"init_images[{i}]") for i, data in enumerate(req.init_images)]
        size = (req.width, req.height)
        if upscale_script is not None:
            extras.check_node_types(catalog.node_types, ["DSSDUpscale"], "script_name 'sd upscale'")
            size = decoded_inits[0].size  # A1111's script upscales the init image from its own size
        if req.mask:
            extras.check_node_types(catalog.node_types, ["DSInpaint", "DSInpaintComposite"], "mask")
            full_res = bool(req.inpaint_full_res)
            if full_res:
                extras.check_node_types(catalog.node_types, ["DSInpaintCropToMask", "DSInpaintPasteBack"],
                                        "inpaint_full_res")
                size = decoded_inits[0].size  # A1111 keeps the picture's size and crops around the mask
            blur = extras.check_blur(extras.mask_blur(req))
            mask = extras.read_mask(decode_image(req.mask, "mask"), req.mask_round, bool(req.inpainting_mask_invert))
            mask_name = store(mask, "mask", 0 if full_res else req.resize_mode, size)
        for index, image in enumerate(decoded_inits):
            init_names.append(store(image, f"init_images[{index}]", 0 if full_res else req.resize_mode, size))

    units: list[extras.ControlUnit] = []
    for name, script in (req.alwayson_scripts or {}).items():
        if name.lower() == "controlnet":
            extras.check_node_types(catalog.node_types, ["DSLoadControlNet", "DSApplyControlNet"],
                                    "alwayson_scripts.controlnet")
            units = extras.parse_controlnet(script, catalog.controlnets, req.width, req.height,
                                            lambda image, f, mode: store(image, f, mode), kind == "img2img")

    seed = _random_seed() if req.seed == -1 else req.seed
    subseed = _random_seed() if req.subseed == -1 else req.subseed
    per_graph = 1 if upscale_script is not None else req.batch_size  # SD upscale: one picture per iteration
    total = per_graph * req.n_iter
    strength = req.subseed_strength
    all_seeds = [seed + (0 if strength > 0 else i) for i in range(total)]
    all_subseeds = [subseed + i for i in range(total)]
    denoise = 1.0 if kind == "txt2img" else float(req.denoising_strength if req.denoising_strength is not None else 0.75)
    switch = None
    if refiner:
        switch = max(1, min(req.steps - 1, int(req.steps * req.refiner_switch_at))) if req.steps > 1 else None
        if switch is None:
            refiner = None

    refiner_scored = bool(refiner) and _takes_aesthetic_score(catalog, refiner)
    graphs, sampler_steps = [], []
    output_node = ""
    for k in range(req.n_iter):
        g = Graph()
        steps_of: dict[str, int] = {}
        loader = g.add("DSLoadModel", model_name=settings.model, dtype="auto")
        model_ref, te_ref = extras.lora_chain(g, [loader, 0], [loader, 1], lora_list)
        model_ref, vae_ref = _seamless(g, req.tiling, model_ref, [loader, 2])
        pos = _guided(g, family, _encode(g, te_ref, prompt, settings), req)
        neg = _encode(g, te_ref, negative, settings)
        pixels = None
        seed_k = seed if strength > 0 else seed + k * per_graph
        crop = inpainted = None
        if kind == "txt2img":
            empty = getattr(family, "empty_latent_node", "EmptyLatentImage")  # 16 channels for SD3 / Flux
            latent = g.add(empty, width=req.width, height=req.height, batch_size=req.batch_size)
        else:
            picks = [init_names[(k * per_graph + j) % len(init_names)] for j in range(per_graph)]
            loads = {name: g.add("LoadImage", image=name) for name in dict.fromkeys(picks)}
            if len(loads) == 1 and per_graph > 1:
                pixels = g.add("RepeatImageBatch", image=[loads[picks[0]], 0], amount=per_graph)
            else:
                pixels = loads[picks[0]]
                for name in picks[1:]:
                    pixels = g.add("ImageBatch", image1=[pixels, 0], image2=[loads[name], 0])
            if mask_name:
                mask_node = g.add("LoadImageMask", image=mask_name, channel="red")
                source, source_mask = [pixels, 0], [mask_node, 0]
                if full_res:
                    crop = g.add("DSInpaintCropToMask", image=[pixels, 0], mask=[mask_node, 0],
                                 padding=req.inpaint_full_res_padding, width=req.width, height=req.height,
                                 model=model_ref)
                    source, source_mask = [crop, 0], [crop, 1]
                inpainted = g.add("DSInpaint", image=source, mask=source_mask, vae=vae_ref, model=model_ref,
                                  grow=0, blur=blur, fill=extras.FILL_MODES[req.inpainting_fill],
                                  fill_seed=seed_k % 2**32, blend_unmasked=True, latent_sampling="sample")
                latent = [inpainted, 0]
            elif upscale_script is not None:
                node = scripts.add_node(
                    g, upscale_script, image=[pixels, 0], model=model_ref, positive=[pos, 0], negative=[neg, 0],
                    vae=vae_ref, width=req.width, height=req.height, denoise=denoise, seed=seed_k,
                    steps=req.steps, cfg=req.cfg_scale, sampler=sampler, schedule=schedule)
                steps_of[node] = req.steps
                output_node = _output(g, faces.add(g, node) if faces else node, settings, kind)
                graphs.append(g.nodes)
                sampler_steps.append(steps_of)
                continue
            else:
                # A1111 samples the VAE posterior; with the sampler's seed it is diffusers' picture too.
                latent = g.add("DSVAEEncode", vae=vae_ref, pixels=[pixels, 0], tiled=False, tile_size=512,
                               latent_sampling="sample")
        init_pixels = [pixels, 0] if pixels else None
        if units and crop is not None:
            init_pixels = [crop, 0]
        c_pos, c_neg = extras.control_chain(g, pos, neg, units, init_pixels) if units else ([pos, 0], [neg, 0])
        sub_k = subseed + k * per_graph
        common = dict(seed=seed_k, variation_seed=sub_k, variation_strength=strength)
        first = _sampler(g, model_ref, c_pos, c_neg, latent, steps=req.steps, cfg=req.cfg_scale, sampler=sampler,
                         schedule=schedule, denoise=denoise, end=switch or END_AT_LAST_STEP, **common)
        steps_of[first] = req.steps
        out, vae_out = first, vae_ref
        if refiner:
            r_loader = g.add("DSLoadModel", model_name=refiner, dtype="auto")
            r_model, r_vae = _seamless(g, req.tiling, [r_loader, 0], [r_loader, 2])
            r_pos = _encode(g, [r_loader, 1], prompt, settings)
            r_neg = _encode(g, [r_loader, 1], negative, settings)
            if refiner_scored:
                # A1111's sdxl_refiner_high/low_aesthetic_score, on the refiner's prompts.
                r_pos = g.add("DSSDXLAestheticScore", conditioning=[r_pos, 0], aesthetic_score=settings.aesthetic_score)
                r_neg = g.add("DSSDXLAestheticScore", conditioning=[r_neg, 0],
                              aesthetic_score=settings.negative_aesthetic_score)
            out = _sampler(g, r_model, r_pos, r_neg, out, steps=req.steps, cfg=req.cfg_scale, sampler=sampler,
                           schedule=schedule, denoise=denoise, start=switch, **common)
            steps_of[out] = req.steps
            vae_out = r_vae
        if hires:
            h_loader = g.add("DSLoadModel", model_name=hires.model, dtype="auto") if hires.model else loader
            h_vae = vae_ref if h_loader == loader else _seamless(g, req.tiling, [h_loader, 0], [h_loader, 2])[1]
            # An edited prompt is scheduled anew for the hires pass (A1111's hires timeline).
            edited = has_editing(hires.prompt) or has_editing(hires.negative)
            if h_loader == loader and hires.prompt == req.prompt and hires.negative == req.negative_prompt \
                    and not edited:
                h_model, h_pos, h_neg = model_ref, c_pos, c_neg
            else:
                h_model, h_te = extras.lora_chain(g, [h_loader, 0], [h_loader, 1], hires_loras)
                h_model = _seamless(g, req.tiling, h_model, h_vae)[0]
                h_text, h_negative = styles.apply_styles(hires.prompt, hires.negative, req.styles or [],
                                                         catalog.styles)
                h_family = _family(catalog, hires.model) if hires.model else family
                h_pos = _guided(g, h_family, _encode(g, h_te, strip_lora_tags(h_text)[0], settings,
                                                     first_pass_steps=req.steps), req)
                h_neg = _encode(g, h_te, strip_lora_tags(h_negative)[0], settings, first_pass_steps=req.steps)
                if units and h_loader == loader:
                    h_pos, h_neg = extras.control_chain(g, h_pos, h_neg, units, None)
            if hires.upscaler in LATENT_UPSCALERS:
                up = g.add("LatentUpscale", samples=[out, 0], upscale_method=LATENT_UPSCALERS[hires.upscaler],
                           width=hires.width, height=hires.height, crop="disabled")
            else:
                decoded_lo = g.add("DSVAEDecode", vae=vae_out, samples=[out, 0], tiled=False, tile_size=512)
                up_pixels = decoded_lo
                if hires.upscaler in catalog.upscale_models:
                    up_model = g.add("UpscaleModelLoader", model_name=hires.upscaler)
                    up_pixels = g.add("ImageUpscaleWithModel", upscale_model=[up_model, 0], image=[decoded_lo, 0])
                    method = "lanczos"
                else:
                    method = IMAGE_UPSCALERS[hires.upscaler]
                scaled = g.add("ImageScale", image=[up_pixels, 0], upscale_method=method, width=hires.width,
                               height=hires.height, crop="disabled")
                # The mode: A1111 draws this one from its global RNG, not the seed, so no seed
                # reproduces it; the mean keeps the hires pass deterministic.
                up = g.add("DSVAEEncode", vae=h_vae, pixels=[scaled, 0], tiled=False, tile_size=512,
                           latent_sampling="mode")
            denoise_hr = float(req.denoising_strength if req.denoising_strength is not None else 0.75)
            out = _sampler(g, h_model, h_pos, h_neg, up, steps=hires.steps, cfg=hires.cfg, sampler=hires.sampler,
                           schedule=hires.schedule, denoise=denoise_hr, **common)
            steps_of[out] = hires.steps
            vae_out = h_vae
        decoded = g.add("DSVAEDecode", vae=vae_out, samples=[out, 0], tiled=False, tile_size=512)
        if faces:  # A1111 restores faces before it pastes an inpainted crop back
            decoded = faces.add(g, decoded)
        if inpainted is not None and crop is not None:
            decoded = g.add("DSInpaintPasteBack", crop=[crop, 2], image=[decoded, 0], mask=[inpainted, 1])
        elif inpainted is not None:
            decoded = g.add("DSInpaintComposite", original=[pixels, 0], generated=[decoded, 0], mask=[inpainted, 1])
        output_node = _output(g, decoded, settings, kind)
        graphs.append(g.nodes)
        sampler_steps.append(steps_of)

    params_common: dict[str, Any] = {
        "Steps": req.steps,
        "Sampler": sampler,
        "Schedule type": SCHEDULE_LABELS[schedule],
        "CFG scale": req.cfg_scale,
        "Distilled CFG Scale": (req.distilled_cfg_scale if req.distilled_cfg_scale is not None else DEFAULT_GUIDANCE)
        if getattr(family, "guidance_embedding", False) else None,
        "Size": f"{req.width}x{req.height}",
        "Model": model_stem(settings.model),
        "Variation seed strength": strength if strength > 0 else None,
        "Denoising strength": denoise if kind == "img2img" else (
            (req.denoising_strength if req.denoising_strength is not None else 0.75) if hires else None),
        "Clip skip": settings.clip_skip if settings.clip_skip > 1 else None,
    }
    if hires:
        params_common.update(hires.params)
    if req.tiling:
        params_common["Tiling"] = True
    if faces:
        params_common["Face restoration"] = faces.label
    if upscale_script is not None:
        params_common.update(upscale_script.infotext())
    if refiner:
        params_common["Refiner"] = model_stem(refiner)
        params_common["Refiner switch at"] = req.refiner_switch_at
    if settings.old_timelines and (has_editing(prompt) or has_editing(negative)):
        params_common["Old prompt editing timelines"] = True
    if mask_name:
        params_common["Mask blur"] = blur
        if full_res:
            params_common["Inpaint area"] = "Only masked"
            params_common["Masked area padding"] = req.inpaint_full_res_padding
    for unit in units:
        params_common[f"ControlNet {unit.index}"] = unit.infotext()
    # A1111 keeps <lora:...> tags in the infotext and info prompts (only the text encoded loses them);
    # the infotext and all_prompts carry the styles merged in, "prompt" the request's own text.
    prompt, negative = styled, styled_negative
    texts = []
    for i in range(total):
        params = dict(params_common)
        params["Seed"] = all_seeds[i]
        if strength > 0:
            params["Variation seed"] = all_subseeds[i]
        texts.append(infotext.build_infotext(prompt, negative, params))
    info = {
        "prompt": req.prompt,
        "all_prompts": [prompt] * total,
        "negative_prompt": req.negative_prompt,
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
        "restore_faces": faces is not None,
        "face_restoration_model": faces.label if faces else None,
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
                info=info, save=settings.save, samples_per_graph=per_graph)


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
