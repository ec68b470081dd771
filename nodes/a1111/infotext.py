"""A1111's "parameters" text ("infotext"): writing it and reading it back.

The text is what A1111 stores in a PNG's `parameters` chunk and returns in
`info.infotexts`; image browsers and A1111's "PNG Info" read it:

    a lighthouse at dusk
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: v1-5

The prompt may span several lines; the negative prompt starts at the line
beginning "Negative prompt: "; the last line holds `Key: value` pairs
separated by ", ", a value that contains a comma, colon or line break being
written as a JSON string. Pure functions: no ComfyUI, no torch.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Optional

NEGATIVE_PREFIX = "Negative prompt:"

# The keys A1111 writes, in its order; others follow in the order given.
KEY_ORDER = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Clip skip",
    "Tiling",
    "Hires upscale",
    "Hires resize",
    "Hires steps",
    "Hires upscaler",
    "Hires checkpoint",
    "Hires sampler",
    "Hires schedule type",
    "Hires CFG Scale",
    "Hires prompt",
    "Hires negative prompt",
    "Refiner",
    "Refiner switch at",
)


def format_value(value: Any) -> str:
    """A number or text as A1111 prints it: 7.0 -> "7", 0.5 -> "0.5", True -> "True"."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return repr(round(value, 6))
    return str(value)


def quote(text: str) -> str:
    """Quote a value (as JSON) when it would break the "Key: value, ..." line."""
    if not any(ch in text for ch in ",:\n\""):
        return text
    return json.dumps(text, ensure_ascii=False)


def ordered_params(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """`params` without None values, A1111's keys first in its order."""
    known = [(k, params[k]) for k in KEY_ORDER if k in params]
    rest = [(k, v) for k, v in params.items() if k not in KEY_ORDER]
    return [(k, v) for k, v in known + rest if v is not None]


def format_params_line(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}: {quote(format_value(value))}" for key, value in ordered_params(params))


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """The full text: prompt, optional "Negative prompt:" line, parameters line."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    lines.append(format_params_line(params))
    return "\n".join(lines).strip()


def _split_pairs(line: str) -> Optional[list[tuple[str, str]]]:
    """`Key: value, Key: "quoted, value"` -> pairs; None when the line is not such a list."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        colon = line.find(":", i)
        if colon <= i:
            return None
        key = line[i:colon].strip()
        if not key or "," in key or '"' in key:
            return None
        i = colon + 1
        while i < n and line[i] == " ":
            i += 1
        if i < n and line[i] == '"':
            try:
                value, end = json.JSONDecoder().raw_decode(line, i)
            except ValueError:
                return None
            if not isinstance(value, str):
                return None
            i = end
            while i < n and line[i] == " ":
                i += 1
            if i < n and line[i] != ",":
                return None
            i += 1
        else:
            comma = line.find(",", i)
            end = n if comma < 0 else comma
            value = line[i:end].strip()
            i = end + 1
        pairs.append((key, value))
    return pairs


def _coerce(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_infotext(text: str) -> dict[str, Any]:
    """Read a "parameters" text back: {"Prompt", "Negative prompt", and every key}.

    Numbers become int or float; "Size: 512x768" also gives "Size-1" (width)
    and "Size-2" (height) as A1111's reader does. Text without a parameters
    line gives just the prompt.
    """
    lines = text.strip().split("\n") if text.strip() else []
    pairs: list[tuple[str, str]] = []
    if lines:
        parsed = _split_pairs(lines[-1])
        if parsed and len(parsed) >= 3:
            pairs = parsed
            lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX):
            target = negative_lines
            line = line[len(NEGATIVE_PREFIX):].lstrip(" ")
        target.append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in pairs:
        result[key] = _coerce(value)
        if key in ("Size", "Hires resize", "Seed resize from") and isinstance(result[key], str):
            parts = value.split("x")
            if len(parts) == 2 and all(p.isdigit() for p in parts):
                result[f"{key}-1"], result[f"{key}-2"] = int(parts[0]), int(parts[1])
    return result


# Infotext keys -> request fields (for the request's `infotext` field).
INFOTEXT_FIELDS = {
    "Prompt": "prompt",
    "Negative prompt": "negative_prompt",
    "Steps": "steps",
    "Sampler": "sampler_name",
    "Schedule type": "scheduler",
    "CFG scale": "cfg_scale",
    "Seed": "seed",
    "Size-1": "width",
    "Size-2": "height",
    "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength",
    "Denoising strength": "denoising_strength",
    "Tiling": "tiling",
    "Hires upscale": "hr_scale",
    "Hires steps": "hr_second_pass_steps",
    "Hires upscaler": "hr_upscaler",
    "Hires sampler": "hr_sampler_name",
    "Hires schedule type": "hr_scheduler",
    "Hires prompt": "hr_prompt",
    "Hires negative prompt": "hr_negative_prompt",
    "Hires CFG Scale": "hr_cfg",
    "Hires resize-1": "hr_resize_x",
    "Hires resize-2": "hr_resize_y",
}


def request_fields_from_infotext(text: str, fields: Iterable[str]) -> dict[str, Any]:
    """The request fields that `text` sets, limited to `fields` (a request model's fields).

    "Model" becomes override_settings.sd_model_checkpoint and "Clip skip"
    override_settings.CLIP_stop_at_last_layers, as in A1111.
    """
    parsed = parse_infotext(text)
    allowed = set(fields)
    out: dict[str, Any] = {}
    for key, field in INFOTEXT_FIELDS.items():
        if key in parsed and field in allowed and parsed[key] != "":
            out[field] = parsed[key]
    if "Hires upscale" in parsed and "enable_hr" in allowed:
        out["enable_hr"] = True
    overrides = {}
    if parsed.get("Face restoration") not in (None, "") and "restore_faces" in allowed:
        out["restore_faces"] = True  # A1111 writes the restorer's name; its presence turns restoration on
        overrides["face_restoration_model"] = str(parsed["Face restoration"])
    if "Model" in parsed:
        overrides["sd_model_checkpoint"] = str(parsed["Model"])
    if "Clip skip" in parsed:
        overrides["CLIP_stop_at_last_layers"] = parsed["Clip skip"]
    if overrides:
        out["override_settings"] = overrides
    return out
