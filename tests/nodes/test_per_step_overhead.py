"""The pack's denoising step makes no more Python calls than diffusers' own pipeline's.

Counts, not time (DESIGN.md: no timing assertions): cProfile counts every
Python-level call, which is deterministic for a given model and step count,
so the comparison cannot be hidden by a busy machine. The model is the same
tiny SD1.5 (and SDXL) for both ways, loaded from one diffusers folder; the
per-step figure is the slope between 2 and 4 steps
(tests/benchmarks/overhead_profile.py, which also prints the full-topology
table recorded in docs/benchmark.md).

Before the per-step comfy.ops layers (nodes/comfy_fast_layers.py) the pack
made 25 % more calls per step than diffusers on the SD1.5 topology, 21 % on
SDXL; now it makes 23-24 more per step (0.2 %: the sampler's interrupt check,
progress report and the scheduler output it reads the preview from). The
bound leaves room for a few calls of future per-step work, not for a per-layer
wrapper (one call per layer is 10 % or more).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import overhead_profile  # noqa: E402

PER_STEP_MARGIN = 1.02


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_per_step_python_calls_at_most_diffusers(models_dir, model):
    counts = overhead_profile.compare(model, models_dir / "diffusers")
    pack, diffusers = counts["pack"], counts["diffusers"]
    assert diffusers.per_step > 1000, counts  # the count did see the UNet's layers
    assert pack.per_step <= diffusers.per_step * PER_STEP_MARGIN, overhead_profile.table({model: counts})


def test_per_step_layers_still_stream_after_a_partial_unload(models_dir):
    """The fast forward is chosen per call: a layer ComfyUI streams takes comfy.ops' cast path."""
    import torch

    from diffusers_studio.nodes import comfy_bridge
    from diffusers_studio.nodes.loaders import DSLoadModel

    folder = overhead_profile.save_model("tiny-sd15", models_dir / "diffusers")
    model = DSLoadModel.execute(folder.name, "float32").args[0]
    unet = model.unet
    patcher = comfy_bridge.patcher_for(unet, per_step=True)
    layers = [m for m in unet.modules() if type(m).__qualname__.startswith("PerStep")]
    assert len(layers) > 50

    import comfy.ops

    calls = []
    real = comfy.ops.cast_bias_weight

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        before = unet(sample, 10, encoder_hidden_states=context).sample
    comfy.ops.cast_bias_weight = counting
    try:
        patcher.load(torch.device("cpu"), full_load=True)  # as load_models_gpu: layers marked loaded
        patcher.partially_unload(torch.device("cpu"), memory_to_free=patcher.model_size())  # no ON_LOAD here
        streamed = [m for m in layers if m.comfy_cast_weights]
        assert streamed
        with torch.no_grad():
            after = unet(sample, 10, encoder_hidden_states=context).sample
    finally:
        comfy.ops.cast_bias_weight = real
        patcher.unpatch_model(torch.device("cpu"))
    assert len(calls) >= len(streamed)
    assert torch.equal(before, after)
