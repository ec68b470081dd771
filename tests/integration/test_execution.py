"""Running prompts on a real server: progress, previews, cancel, memory, seeds.

These are the ComfyUI citizenship duties of DESIGN.md, checked the way the
editor observes them: `progress` messages on the websocket that advance to
the number of steps, latent preview frames, Cancel (`/interrupt`) stopping a
long run at a step, `POST /free` leaving a working server, and seeds that
reproduce. Graphs come from harness.prompts (tiny models, 64x64). Seeds
differ between tests so that ComfyUI's output cache never answers for the
sampler.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from harness import prompts
from harness.models import SD15_CHECKPOINT, SD15_DIFFUSERS, SDXL_CHECKPOINT
from harness.prompts import SAMPLER, SAVE

pytestmark = pytest.mark.integration


def _pixels(comfy, image_ref) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(comfy.view(image_ref))).convert("RGB"), dtype=np.int16)


def _run_ok(comfy, prompt, timeout=180):
    result = comfy.run(prompt, timeout=timeout)
    assert result.status == "success", result.summary()
    return result


@pytest.fixture
def sampler_run(idle_comfy, session_cache):
    """One 8-step DSSampler run whose websocket messages several tests read."""
    if "sampler_run" not in session_cache:
        session_cache["sampler_run"] = _run_ok(idle_comfy, prompts.txt2img(steps=8, seed=1001, prefix="test/progress"))
    return session_cache["sampler_run"]


def test_progress_advances_to_the_step_count(sampler_run):
    progress = [p for p in sampler_run.of_type("progress") if p.get("node") == SAMPLER]
    assert progress, f"no progress message for DSSampler:\n{sampler_run.summary()}"
    values = [p["value"] for p in progress]
    assert values == sorted(values), f"progress went backwards: {values}"
    assert all(p["max"] == 8 for p in progress), [p["max"] for p in progress]
    assert values[-1] == 8, f"progress ended at {values[-1]}/8"
    assert len(set(values)) >= 4, f"progress did not advance step by step: {values}"


def test_latent_previews_are_sent(sampler_run):
    """The server runs with --preview-method auto; the editor shows these frames."""
    assert sampler_run.preview_frames > 0, "no latent preview frame on the websocket"


def test_executed_message_lists_the_saved_image(sampler_run):
    executed = [e for e in sampler_run.of_type("executed") if e.get("node") == SAVE]
    assert executed and executed[0]["output"]["images"], sampler_run.summary()


@pytest.mark.parametrize("model", [SD15_CHECKPOINT, SDXL_CHECKPOINT, SD15_DIFFUSERS])
def test_each_model_kind_runs(idle_comfy, model):
    """Single-file SD1 and SDXL checkpoints and a diffusers folder all load and sample."""
    result = _run_ok(idle_comfy, prompts.txt2img(model, steps=2, seed=1100, prefix=f"test/{model}"))
    images = result.outputs[SAVE]["images"]
    assert len(images) == 1
    assert idle_comfy.view_image(images[0]).size == (64, 64)


def test_interrupt_stops_a_long_run_and_the_next_prompt_succeeds(idle_comfy):
    steps = 2000
    interrupted_at: list[int] = []

    def cancel_at_first_step(message, result):
        data = message.get("data") or {}
        if message.get("type") == "progress" and data.get("node") == SAMPLER and not interrupted_at:
            interrupted_at.append(data["value"])
            response = idle_comfy.interrupt(result.prompt_id)
            assert response.status_code == 200, response.text

    result = idle_comfy.run(
        prompts.txt2img(steps=steps, seed=1200, prefix="test/interrupt"), timeout=300, on_message=cancel_at_first_step
    )
    assert interrupted_at, f"no progress message before the run ended:\n{result.summary()}"
    assert result.status == "interrupted", result.summary()
    interrupted = result.of_type("execution_interrupted")
    assert interrupted and interrupted[0]["node_id"] == SAMPLER, result.summary()
    last = max(p["value"] for p in result.of_type("progress") if p.get("node") == SAMPLER)
    assert last < steps // 4, f"the sampler ran on to step {last} of {steps} after the interrupt"
    assert not result.outputs.get(SAVE), "an interrupted run saved an image"

    _run_ok(idle_comfy, prompts.txt2img(steps=2, seed=1201, prefix="test/after-interrupt"))


def test_free_memory_then_prompt_still_works(idle_comfy):
    prompt = prompts.txt2img(steps=3, seed=1300, prefix="test/free")
    before = _run_ok(idle_comfy, prompt)
    response = idle_comfy.free(unload_models=True, free_memory=True)
    assert response.status_code == 200, response.text
    after = _run_ok(idle_comfy, prompt)
    # Whether the run came from reloaded models or from the cache, it is the same picture.
    first, second = before.outputs[SAVE]["images"][0], after.outputs[SAVE]["images"][0]
    assert np.array_equal(_pixels(idle_comfy, first), _pixels(idle_comfy, second))


def test_same_seed_gives_the_same_image(idle_comfy):
    seed_a = prompts.txt2img(steps=4, seed=1400, prefix="test/seed-a")
    seed_b = prompts.txt2img(steps=4, seed=1401, prefix="test/seed-b")
    first = _run_ok(idle_comfy, seed_a)
    other = _run_ok(idle_comfy, seed_b)  # evicts the first run's outputs from the cache
    again = _run_ok(idle_comfy, seed_a)
    assert SAMPLER not in again.cached_nodes(), "the sampler output came from the cache: nothing was re-run"
    a1 = _pixels(idle_comfy, first.outputs[SAVE]["images"][0])
    a2 = _pixels(idle_comfy, again.outputs[SAVE]["images"][0])
    b = _pixels(idle_comfy, other.outputs[SAVE]["images"][0])
    assert np.array_equal(a1, a2), f"same seed, different images (max diff {np.abs(a1 - a2).max()})"
    assert not np.array_equal(a1, b), "different seeds gave the same image"


def test_batch_of_two_gives_two_different_images(idle_comfy):
    result = _run_ok(idle_comfy, prompts.txt2img(steps=3, seed=1500, batch=2, prefix="test/batch"))
    images = result.outputs[SAVE]["images"]
    assert len(images) == 2, images
    first, second = (_pixels(idle_comfy, ref) for ref in images)
    assert first.shape == second.shape == (64, 64, 3)
    assert not np.array_equal(first, second), "both images of the batch are identical"


def test_txt2img_then_img2img_of_its_result(idle_comfy):
    """The A1111 round trip in one session: make a picture, then redraw it."""
    made = _run_ok(idle_comfy, prompts.txt2img(steps=3, seed=1600, prefix="test/roundtrip"))
    ref = made.outputs[SAVE]["images"][0]
    name = f"{ref['subfolder']}/{ref['filename']}" if ref.get("subfolder") else ref["filename"]
    redrawn = _run_ok(
        idle_comfy, prompts.img2img(f"{name} [output]", steps=4, seed=1601, denoise=0.5, prefix="test/roundtrip-i2i")
    )
    images = redrawn.outputs[SAVE]["images"]
    assert len(images) == 1
    source, result = _pixels(idle_comfy, ref), _pixels(idle_comfy, images[0])
    assert result.shape == source.shape
    assert not np.array_equal(result, source), "img2img returned its input unchanged"
