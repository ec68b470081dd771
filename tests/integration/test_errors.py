"""Mistakes meet clear answers and leave the server serving.

Predictable mistakes in a prompt are refused by `/prompt` with HTTP 400 and
`node_errors` that name the node, before anything runs (an unknown model, a
step count out of range, a wire of the wrong type). Mistakes only found while
running (a picture whose sides are not multiples of 8) end the prompt with an
`execution_error` whose message says what to change, never a crash: the
server answers afterwards and the next prompt runs.
"""
from __future__ import annotations

import pytest

from harness import prompts
from harness.models import SD15_CHECKPOINT
from harness.prompts import ENCODE, LOADER, POSITIVE, SAMPLER
from harness.server import ODD_IMAGE

pytestmark = pytest.mark.integration


def _refused(comfy, prompt) -> dict:
    """POST a prompt that must fail validation; returns the 400 body."""
    response = comfy.post_prompt(prompt)
    assert response.status_code == 400, f"expected 400, got {response.status_code}: {response.text[:2000]}"
    body = response.json()
    assert "node_errors" in body and "error" in body, body
    return body


def _errors_of(body: dict, node_id: str) -> list[dict]:
    assert node_id in body["node_errors"], f"node {node_id} not named in node_errors: {body['node_errors']}"
    errors = body["node_errors"][node_id]["errors"]
    assert errors, body["node_errors"][node_id]
    return errors


def _text(errors: list[dict]) -> str:
    return " ".join(f"{e.get('message', '')} {e.get('details', '')}" for e in errors)


@pytest.fixture
def alive(idle_comfy, comfy_server):
    """After the test: the process lives, /system_stats answers, a prompt runs."""
    yield idle_comfy
    assert comfy_server.is_running(), f"the server died:\n{comfy_server.log_tail()}"
    assert idle_comfy.get("/system_stats").status_code == 200


def test_unknown_model_name_is_a_400_naming_the_loader(alive):
    body = _refused(alive, prompts.txt2img("no-such-model.safetensors"))
    errors = _errors_of(body, LOADER)
    assert body["node_errors"][LOADER]["class_type"] == "DSLoadModel"
    assert "no-such-model.safetensors" in _text(errors), errors


@pytest.mark.parametrize("steps", [0, -1, 10001])
def test_steps_out_of_range_is_a_400_naming_the_sampler(alive, steps):
    body = _refused(alive, prompts.txt2img(steps=steps))
    errors = _errors_of(body, SAMPLER)
    assert any((e.get("extra_info") or {}).get("input_name") == "steps" for e in errors), errors


def test_wrong_socket_type_is_a_400(alive):
    prompt = prompts.txt2img()
    prompt[SAMPLER]["inputs"]["latent_image"] = [POSITIVE, 0]  # DS_CONDITIONING into LATENT
    body = _refused(alive, prompt)
    errors = _errors_of(body, SAMPLER)
    assert any(e.get("type") == "return_type_mismatch" for e in errors), errors
    assert any((e.get("extra_info") or {}).get("input_name") == "latent_image" for e in errors), errors


def test_unknown_sampler_name_is_a_400(alive):
    body = _refused(alive, prompts.txt2img(sampler_name="no such sampler"))
    assert "no such sampler" in _text(_errors_of(body, SAMPLER))


@pytest.mark.parametrize(
    "name",
    [
        f"../checkpoints/{SD15_CHECKPOINT}",
        f"tiny-sd15/../../checkpoints/{SD15_CHECKPOINT}",
        "../../../../../../etc/passwd",
        "/etc/passwd",
    ],
)
def test_model_name_escaping_the_model_folders_is_refused(alive, name):
    """A name is only ever one the listing produced: traversal is refused, not loaded.

    Refused either at validation (400 naming the loader) or when the loader
    runs (execution_error at the loader with a message naming model_name).
    """
    prompt = prompts.txt2img(name)
    response = alive.post_prompt(prompt)
    if response.status_code == 400:
        errors = _errors_of(response.json(), LOADER)
        assert "model_name" in _text(errors) or name in _text(errors), errors
        return
    assert response.status_code == 200, response.text
    alive.wait_idle()
    history = alive.history(response.json()["prompt_id"])
    status = history.get("status", {})
    assert status.get("status_str") == "error", f"a traversing model name ran: {status}"
    errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
    assert errors and errors[0]["node_id"] == LOADER, status
    assert "model_name" in errors[0]["exception_message"], errors[0]


def test_picture_size_not_multiple_of_8_is_a_clear_execution_error(alive):
    result = alive.run(prompts.img2img(ODD_IMAGE, steps=2, seed=2001, prefix="test/odd"), timeout=120)
    assert result.status == "error", result.summary()
    error = result.error
    assert error["node_id"] == ENCODE and error["node_type"] == "DSVAEEncode", result.summary()
    assert error["exception_type"].endswith("ValueError"), result.summary()
    message = error["exception_message"]
    assert "8" in message and "pixels" in message, f"the message should name the input and the rule: {message!r}"

    after = alive.run(prompts.txt2img(SD15_CHECKPOINT, steps=2, seed=2002, prefix="test/after-error"), timeout=120)
    assert after.status == "success", after.summary()
