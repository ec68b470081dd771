"""Nothing leaks from a run with adapters into the next run without them.

ControlNet, IP-Adapter and LoRA are values applied for one sampler run; the
cached modules must come out exactly as they went in. On the real server: a
plain prompt, then the shipped IP-Adapter + ControlNet workflow and the LoRA
workflow on the same checkpoint, then the plain prompt again (its sampler
re-runs, ComfyUI's cache having moved on) gives the very same pixels.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import prompts
from harness.prompts import SAMPLER, SAVE, shrink
from harness.workflow_api import to_api_prompt

pytestmark = pytest.mark.integration

WORKFLOWS = Path(__file__).resolve().parents[2] / "example_workflows"


def _pixels(comfy, result) -> np.ndarray:
    image = result.outputs[SAVE]["images"][0]
    return np.asarray(Image.open(io.BytesIO(comfy.view(image))).convert("RGB"))


@pytest.mark.parametrize("workflow", ["ipadapter_controlnet.json", "txt2img_lora.json"])
def test_a_run_with_adapters_leaves_the_next_plain_run_unchanged(idle_comfy, object_info, workflow):
    plain = prompts.txt2img(steps=3, seed=3100, prefix="test/leak-plain")
    before = idle_comfy.run(plain)
    assert before.status == "success", before.summary()

    adapters = shrink(to_api_prompt(json.loads((WORKFLOWS / workflow).read_text()), object_info))
    with_adapters = idle_comfy.run(adapters, timeout=300)
    assert with_adapters.status == "success", with_adapters.summary()

    after = idle_comfy.run(plain)
    assert after.status == "success", after.summary()
    assert SAMPLER not in after.cached_nodes(), "the sampler output came from the cache: nothing was re-run"
    assert np.array_equal(_pixels(idle_comfy, before), _pixels(idle_comfy, after))
