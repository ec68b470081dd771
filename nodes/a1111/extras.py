"""A1111's extras as pack nodes: img2img masks, sd-webui-controlnet units, `<lora:...>` tags.

Inpainting (img2img with `mask`): the mask is read as A1111 reads it (the
alpha channel of an RGBA picture with transparency, else its grey levels,
rounded to black and white when `mask_round`), inverted when
`inpainting_mask_invert`, then

    LoadImageMask -> DSInpaint (blur = mask_blur, fill from inpainting_fill)
    -> DSSampler -> DSVAEDecode -> DSInpaintComposite          (whole picture)
    LoadImageMask -> DSInpaintCropToMask (padding, width x height) -> DSInpaint
    -> DSSampler -> DSVAEDecode -> DSInpaintPasteBack          (inpaint_full_res)

`inpainting_fill`: 0 fill -> "blurred", 1 original -> "original",
2 latent noise -> "noise", 3 latent nothing -> "nothing".

ControlNet (`alwayson_scripts.controlnet.args`, sd-webui-controlnet's units):
each enabled unit becomes LoadImage -> [DSCannyEdges | DSLineArtThreshold]
-> DSLoadControlNet -> DSApplyControlNet, chained on the prompts. Modules:
"none", "canny" (threshold_a/low = low threshold, threshold_b/high = high
threshold; 100 and 200 by default), "lineart", "lineart_standard" and
"invert" (dark lines on a light ground -> DSLineArtThreshold with
lines_are_dark, threshold 0.5). `control_mode`: 0 / "Balanced" is the
ordinary ControlNet; 2 / "ControlNet is more important" is diffusers' guess
mode (sd-webui-controlnet renamed its old "Guess Mode" to this); 1 / "My
prompt is more important" has no equivalent in the pack and is refused (422).
A unit without an image uses the img2img init image; txt2img needs one.

LoRA: `<lora:name:weight>` tags (in prompt, negative prompt and hr_prompt)
are removed from the text encoded and become a DSLoadLoRA chain with the
weight as both strengths (`<lora:name:te:unet>` and `te=`/`unet=` set them
apart, as in A1111); `name` is a file of models/loras with or without
its extension. An unknown name is a 404 naming the LoRAs there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .errors import ApiError, not_found, unsupported

FILL_MODES = {0: "blurred", 1: "original", 2: "noise", 3: "nothing"}
MAX_LORA_STRENGTH = 100.0

CN_MODULES = {"none": None, "canny": "canny", "lineart": "lineart", "lineart_standard": "lineart",
              "invert": "lineart"}
CN_CONTROL_MODES = {0: False, "balanced": False, 2: True, "controlnet is more important": True}
CN_CONTROL_MODE_LABELS = {False: "Balanced", True: "ControlNet is more important"}
CN_RESIZE_MODES = {0: 0, "just resize": 0, 1: 1, "crop and resize": 1, "scale to fit (inner fit)": 1,
                   2: 2, "resize and fill": 2, "envelope (outer fit)": 2}


# ------------------------------------------------------------------- masks
def read_mask(image, round_mask: bool, invert: bool):
    """A1111's create_binary_mask (+ inversion): an "L" picture, white = repaint."""
    from PIL import ImageOps

    if image.mode == "RGBA" and image.getchannel("A").getextrema() != (255, 255):
        mask = image.getchannel("A")
    else:
        mask = image.convert("L")
    if round_mask:
        mask = mask.point(lambda v: 255 if v > 128 else 0)
    if invert:
        mask = ImageOps.invert(mask)
    return mask


def mask_blur(req) -> float:
    if req.mask_blur is not None:
        return float(req.mask_blur)
    if req.mask_blur_x != req.mask_blur_y:
        raise unsupported(f"mask_blur_x/mask_blur_y: different blurs ({req.mask_blur_x}, {req.mask_blur_y}) "
                          "are not supported; send mask_blur")
    return float(req.mask_blur_x)


def check_blur(blur: float) -> float:
    if not 0 <= blur <= 64:
        raise unsupported(f"mask_blur: {blur} is outside 0..64 pixels")
    return blur


# ------------------------------------------------------------------- loras
def resolve_lora(name: str, loras: Sequence[str]) -> str:
    from .translate import model_stem

    wanted = name.strip()
    for lora in loras:
        if wanted in (lora, model_stem(lora), lora.rsplit("/", 1)[-1]):
            return lora
    raise not_found("LoRA", name, [model_stem(n) for n in loras])


def resolve_loras(tags: Sequence[tuple[str, float, float]], loras: Sequence[str]) -> list[tuple[str, float, float]]:
    out = []
    for name, te, unet in tags:
        for weight in (te, unet):
            if not -MAX_LORA_STRENGTH <= weight <= MAX_LORA_STRENGTH:
                raise unsupported(f"<lora:{name}:...>: the weight {weight:g} is outside "
                                  f"-{MAX_LORA_STRENGTH:g}..{MAX_LORA_STRENGTH:g}")
        out.append((resolve_lora(name, loras), te, unet))
    return out


def lora_chain(g, model_ref: list, te_ref: list, loras: Sequence[tuple[str, float, float]]) -> tuple[list, list]:
    for name, te, unet in loras:
        node = g.add("DSLoadLoRA", model=model_ref, text_encoder=te_ref, lora_name=name,
                     strength_model=unet, strength_text_encoder=te)
        model_ref, te_ref = [node, 0], [node, 1]
    return model_ref, te_ref


# -------------------------------------------------------------- controlnet
@dataclass
class ControlUnit:
    index: int
    model: str
    module: Optional[str]  # None, "canny", "lineart"
    module_label: str
    image_name: Optional[str]  # None: the init image
    weight: float
    start: float
    end: float
    guess_mode: bool
    low: int = 100
    high: int = 200

    def infotext(self) -> str:
        from .translate import model_stem

        return (f"Module: {self.module_label}, Model: {model_stem(self.model)}, Weight: {self.weight:g}, "
                f"Guidance Start: {self.start:g}, Guidance End: {self.end:g}, "
                f"Control Mode: {CN_CONTROL_MODE_LABELS[self.guess_mode]}")


def _number(unit: dict, key: str, default: float, low: float, high: float, where: str, whole=False) -> float:
    value = unit.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise unsupported(f"{where}.{key}: expected a number, got {value!r}")
    if whole and int(value) != value:
        raise unsupported(f"{where}.{key}: expected a whole number, got {value!r}")
    if not low <= value <= high:
        raise unsupported(f"{where}.{key}: {value!r} is outside {low:g}..{high:g}")
    return int(value) if whole else float(value)


def _key(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def parse_controlnet(script: Any, controlnets: Sequence[str], width: int, height: int,
                     store: Callable[[Any, str, int], str], has_init: bool) -> list[ControlUnit]:
    """sd-webui-controlnet's `{"args": [unit, ...]}` as checked units; images stored for LoadImage.

    `store(pil_image, field, resize_mode)` fits the picture to the request's size and returns its name.
    """
    from .translate import decode_image, resolve_model

    if isinstance(script, list):
        script = {"args": script}
    if not isinstance(script, dict) or not isinstance(script.get("args", []), list):
        raise unsupported('alwayson_scripts.controlnet: expected {"args": [unit, ...]}')
    units = []
    for index, unit in enumerate(script.get("args", [])):
        where = f"alwayson_scripts.controlnet.args[{index}]"
        if not isinstance(unit, dict):
            raise unsupported(f"{where}: expected an object (a ControlNet unit), got {type(unit).__name__}")
        if unit.get("enabled", True) is False:
            continue
        module_raw = unit.get("module") or "none"
        if not isinstance(module_raw, str):
            raise unsupported(f"{where}.module: expected a name, got {module_raw!r}")
        module_key = module_raw.strip().lower().split(" ")[0]
        if module_key not in CN_MODULES:
            raise unsupported(f"{where}.module: {module_raw!r} is not available; use one of "
                              f"{', '.join(CN_MODULES)} (or preprocess the image yourself and send 'none')")
        model_name = unit.get("model")
        if model_name in (None, "", "None", "none"):
            raise unsupported(f"{where}.model: a ControlNet model is required (GET /controlnet/model_list)")
        model = resolve_model(model_name, controlnets, "ControlNet model")
        mode_key = _key(unit.get("control_mode", 0))
        if mode_key not in CN_CONTROL_MODES:
            raise unsupported(f"{where}.control_mode: {unit.get('control_mode')!r} is not supported; use 0 "
                              "('Balanced') or 2 ('ControlNet is more important', diffusers' guess mode)")
        resize_key = _key(unit.get("resize_mode", 1))
        if resize_key not in CN_RESIZE_MODES:
            raise unsupported(f"{where}.resize_mode: {unit.get('resize_mode')!r} is not one of "
                              "'Just Resize', 'Crop and Resize', 'Resize and Fill'")
        image = unit.get("image", unit.get("input_image"))
        if isinstance(image, dict):
            if image.get("mask"):
                raise unsupported(f"{where}.image.mask: ControlNet unit masks are not supported; send the image alone")
            image = image.get("image")
        name = None
        if image:
            name = store(decode_image(image, f"{where}.image"), f"{where}.image", CN_RESIZE_MODES[resize_key])
        elif not has_init:
            raise unsupported(f"{where}.image: txt2img needs a control image (base64)")
        weight = _number(unit, "weight", 1.0, 0.0, 10.0, where)
        start = _number(unit, "guidance_start", 0.0, 0.0, 1.0, where)
        end = _number(unit, "guidance_end", 1.0, 0.0, 1.0, where)
        if start >= end:
            raise unsupported(f"{where}: guidance_start ({start:g}) must be below guidance_end ({end:g})")
        control = ControlUnit(index, model, CN_MODULES[module_key], module_raw, name, weight, start, end,
                              CN_CONTROL_MODES[mode_key])
        if control.module == "canny":
            low_key = "low_threshold" if "low_threshold" in unit else "threshold_a"
            high_key = "high_threshold" if "high_threshold" in unit else "threshold_b"
            low = unit.get(low_key)
            high = unit.get(high_key)
            # sd-webui-controlnet sends -1 (or 64) for "the module's default".
            control.low = 100 if low in (None, -1) else _number(unit, low_key, 100, 0, 255, where, whole=True)
            control.high = 200 if high in (None, -1) else _number(unit, high_key, 200, 0, 255, where, whole=True)
        units.append(control)
    return units


def control_chain(g, pos: str, neg: str, units: Sequence[ControlUnit], init_pixels: Optional[list],
                  pos_out: int = 0, neg_out: int = 0) -> tuple[list, list]:
    """Apply each unit to the prompts; returns the new [positive ref, negative ref]."""
    pos_ref, neg_ref = [pos, pos_out], [neg, neg_out]
    for unit in units:
        pixels = [g.add("LoadImage", image=unit.image_name), 0] if unit.image_name else init_pixels
        if unit.module == "canny":
            pixels = [g.add("DSCannyEdges", image=pixels, low_threshold=unit.low, high_threshold=unit.high), 0]
        elif unit.module == "lineart":
            pixels = [g.add("DSLineArtThreshold", image=pixels, threshold=0.5, lines_are_dark=True), 0]
        net = g.add("DSLoadControlNet", control_net_name=unit.model, dtype="auto")
        applied = g.add("DSApplyControlNet", positive=pos_ref, negative=neg_ref, control_net=[net, 0], image=pixels,
                        strength=unit.weight, start_percent=unit.start, end_percent=unit.end,
                        guess_mode=unit.guess_mode)
        pos_ref, neg_ref = [applied, 0], [applied, 1]
    return pos_ref, neg_ref


def check_node_types(node_types: Sequence[str], needed: Sequence[str], feature: str) -> None:
    missing = [n for n in needed if n not in node_types]
    if missing:
        raise ApiError(422, f"{feature} needs the {', '.join(missing)} node(s), which this version of Diffusers "
                            "Studio lacks")
