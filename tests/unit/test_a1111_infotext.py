"""A1111's "parameters" text: writing, quoting and reading back (pure functions)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# nodes/a1111/infotext.py needs neither ComfyUI nor torch: load it on its own.
_PATH = Path(__file__).resolve().parents[2] / "nodes" / "a1111" / "infotext.py"
_spec = importlib.util.spec_from_file_location("ds_a1111_infotext", _PATH)
infotext = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = infotext
_spec.loader.exec_module(infotext)


def test_build_matches_a1111_layout():
    text = infotext.build_infotext(
        "a lighthouse at dusk",
        "blurry",
        {"Seed": 1, "Steps": 20, "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": 7.0,
         "Size": "512x512", "Model": "v1-5", "Clip skip": None},
    )
    assert text == (
        "a lighthouse at dusk\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: v1-5"
    )


def test_no_negative_line_when_empty():
    assert infotext.build_infotext("cat", "", {"Steps": 2, "Seed": 3, "Size": "64x64"}) == \
        "cat\nSteps: 2, Seed: 3, Size: 64x64"


@pytest.mark.parametrize("value,expected", [(7.0, "7"), (7.5, "7.5"), (0.75, "0.75"), (True, "True"), (3, "3")])
def test_numbers_print_as_a1111(value, expected):
    assert infotext.format_value(value) == expected


def test_values_with_commas_or_colons_are_quoted():
    assert infotext.quote("a, b") == '"a, b"'
    assert infotext.quote("x: y") == '"x: y"'
    assert infotext.quote("plain") == "plain"


def test_round_trip():
    params = {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 6.5, "Seed": 42,
              "Size": "512x768", "Model": "v1-5", "Hires prompt": "a, b: c", "Denoising strength": 0.4}
    text = infotext.build_infotext("line one\nline two, (weighted:1.2)", "bad\nworse", params)
    parsed = infotext.parse_infotext(text)
    assert parsed["Prompt"] == "line one\nline two, (weighted:1.2)"
    assert parsed["Negative prompt"] == "bad\nworse"
    assert parsed["Steps"] == 20 and parsed["CFG scale"] == 6.5 and parsed["Seed"] == 42
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Hires prompt"] == "a, b: c"
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 768)


def test_text_without_parameters_is_all_prompt():
    assert infotext.parse_infotext("just a prompt, nothing else") == {
        "Prompt": "just a prompt, nothing else", "Negative prompt": ""}


def test_request_fields_from_infotext():
    text = "cat\nNegative prompt: dog\nSteps: 9, Sampler: Euler, CFG scale: 5, Seed: 8, Size: 64x128, " \
           "Model: tiny, Clip skip: 2"
    fields = infotext.request_fields_from_infotext(text, ["prompt", "negative_prompt", "steps", "sampler_name",
                                                          "cfg_scale", "seed", "width", "height"])
    assert fields == {"prompt": "cat", "negative_prompt": "dog", "steps": 9, "sampler_name": "Euler",
                      "cfg_scale": 5, "seed": 8, "width": 64, "height": 128,
                      "override_settings": {"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 2}}
