"""`make run` as a newcomer meets it: its start-up log, the editor's first screen, a first Run, a typo in a curl body.

One server for the module, started by `make run`'s own script
(scripts/run_comfyui.py through harness.make_run) in a fresh temporary base
directory, so the demo models, the first-workflow setting and the output
filter are those a user gets. The browser tests open the editor as a first
visit (no settings posted, empty browser storage).
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import requests

from harness import models, prompts
from harness.client import ComfyClient

from browser.editor import Editor

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
FIRST_WORKFLOW = json.loads((REPO_ROOT / "example_workflows" / "txt2img_sd15.json").read_text(encoding="utf-8"))
# ComfyUI's "no limit" for a device without a VRAM budget (model_management: 1e32 bytes), as it logs it in MB.
NO_LIMIT_MB = f"{1e32 / (1024 * 1024):.2f}"


@pytest.fixture(scope="module")
def make_run_client(make_run_server) -> ComfyClient:
    return ComfyClient(make_run_server.url)


# ------------------------------------------------------------------ the log
def test_the_start_says_in_one_line_that_torchaudio_is_absent_and_shows_no_traceback(make_run_server):
    log_text = make_run_server.log_text()
    assert "To see the GUI go to" in log_text, log_text[-3000:]
    for noise in ("No module named 'torchaudio'", "IMPORT FAILED", "Traceback (most recent call last)"):
        assert noise not in log_text, f"{noise!r} in make run's output:\n{log_text[-4000:]}"
    notes = [line for line in log_text.splitlines() if "torchaudio is not installed" in line]
    if importlib.util.find_spec("torchaudio") is None:
        assert len(notes) == 1, notes
        assert "audio nodes" in notes[0] and "Diffusers Studio does not use them" in notes[0]
    else:
        assert notes == [], "torchaudio is installed: nothing to say"


def test_the_packs_models_have_names_a_person_recognises_in_comfyuis_log(make_run_server, make_run_client):
    offset = make_run_server.log_size()
    result = make_run_client.run(prompts.txt2img(prefix="make_run/names"))
    assert result.status == "success", result.summary()
    log_text = make_run_server.log_since(offset)
    assert "_Holder" not in log_text, log_text
    loaded = re.findall(r"Requested to load (.+)", log_text)
    for name in ("UNet2DConditionModel (Diffusers Studio)", "CLIPTextModel (Diffusers Studio)",
                 "AutoencoderKL (Diffusers Studio)"):
        assert name in loaded, f"{name} not in {loaded}:\n{log_text}"
    # The huge "MB usable" figure is ComfyUI's own no-limit value on a CPU (not the pack's);
    # what the pack reports, the size loaded, is the modules' real size.
    figures = re.findall(r"loaded completely; ([0-9.]+) MB usable, ([0-9.]+) MB loaded", log_text)
    assert len(figures) >= 3, log_text
    demo_checkpoints = models.demo_dir(make_run_server.base_dir / "models") / "checkpoints"
    checkpoint_mb = (demo_checkpoints / prompts.SD15_CHECKPOINT).stat().st_size / 2**20
    total_loaded = sum(float(loaded_mb) for _, loaded_mb in figures)
    assert all(float(loaded_mb) > 0 for _, loaded_mb in figures), figures
    assert total_loaded < 2.5 * checkpoint_mb, (figures, checkpoint_mb)  # float32 copies of a float32/16 file
    if make_run_client.system_stats()["devices"][0]["type"] == "cpu":
        assert {usable for usable, _ in figures} == {NO_LIMIT_MB}, figures


# ------------------------------------------------------------- demo models
def _options(node_info: dict, input_name: str) -> list:
    spec = node_info["input"]["required"][input_name]
    return spec[0] if isinstance(spec[0], list) else spec[1].get("options", [])


def test_native_loaders_do_not_offer_the_demo_files_the_packs_loader_does(make_run_server, make_run_client):
    """ComfyUI's own loaders cannot read the tiny demo files, so they must not offer them."""
    demo = models.demo_dir(make_run_server.base_dir / "models")
    demo_checkpoints = sorted(path.name for path in (demo / "checkpoints").glob("*.safetensors"))
    demo_loras = sorted(path.name for path in (demo / "loras").glob("*.safetensors"))
    assert prompts.SD15_CHECKPOINT in demo_checkpoints and demo_loras, (demo_checkpoints, demo_loras)
    info = make_run_client.object_info()
    native_checkpoints = _options(info["CheckpointLoaderSimple"], "ckpt_name")
    assert not set(native_checkpoints) & set(demo_checkpoints), native_checkpoints
    assert not set(_options(info["LoraLoader"], "lora_name")) & set(demo_loras)
    assert set(demo_checkpoints) <= set(_options(info["DSLoadModel"], "model_name"))
    assert set(demo_loras) <= set(_options(info["DSLoadLoRA"], "lora_name"))


# ------------------------------------------------------ malformed /prompt bodies
@pytest.mark.parametrize(
    "body, says",
    [
        (b'{"prompt": {"1": ', "not valid JSON"),
        (b"", "empty"),
        (b'["prompt"]', "list, not an object"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
    ids=["truncated", "empty", "a-list", "not-utf8"],
)
@pytest.mark.parametrize("path", ["/prompt", "/api/prompt"])
def test_a_malformed_prompt_body_is_a_400_saying_what_is_wrong(make_run_server, path, body, says):
    response = requests.post(make_run_server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400, (response.status_code, response.text)
    answer = response.json()
    assert answer["node_errors"] == {}
    assert says in answer["error"]["message"], answer
    assert "JSON object" in answer["error"]["details"], answer
    assert requests.get(make_run_server.url + "/system_stats", timeout=10).status_code == 200


def test_comfyuis_own_answers_are_unchanged_for_everything_else(make_run_server, make_run_client):
    # A JSON object without a prompt: ComfyUI's own 400.
    response = requests.post(make_run_server.url + "/prompt", json={"client_id": "x"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["type"] == "no_prompt", response.text
    # Other routes keep ComfyUI's handling, even of a malformed body (POST /queue is ComfyUI's 500).
    response = requests.post(make_run_server.url + "/queue", data=b"{", timeout=30)
    assert response.status_code == 500, (response.status_code, response.text)
    # A well-formed prompt still runs.
    assert make_run_client.run(prompts.txt2img(prefix="make_run/after_bad_bodies")).status == "success"


# ----------------------------------------------------------- the first screen
def _wait_for_first_graph(editor: Editor) -> list[str]:
    editor.page.wait_for_function("() => app.graph.nodes.length > 0", timeout=60_000)
    editor.page.wait_for_timeout(500)
    return sorted(editor.page.evaluate("() => app.graph.nodes.map((n) => n.type)"))


def test_a_first_visit_shows_the_packs_txt2img_workflow_and_run_makes_an_image(browser, make_run_server, artifacts_dir):
    editor = Editor.open(browser, make_run_server.url, fresh_user=True)
    try:
        types = _wait_for_first_graph(editor)
        assert types == sorted(node["type"] for node in FIRST_WORKFLOW["nodes"]), types
        report = editor.graph_report()
        assert not report["dialogs"], report["dialogs"]
        assert not report["invalid"], report["invalid"]
        editor.screenshot_graph(artifacts_dir / "make_run_first_screen.png", clean=False)

        # Smaller for a shared CPU, as test_workflows.py does (64x64, 3 steps); nothing else changes.
        editor.shrink(size=64, max_steps=3)
        state = editor.queue_and_wait(timeout=300)
        assert not state.get("timed_out"), state
        assert not state["nodeErrors"] and not state["executionError"], state
        assert state["done"], state
        images = [image for output in state["shown"] for image in output["images"]]
        assert images and all(image["width"] == 64 and image["height"] == 64 for image in images), images
        assert not editor.pack_errors(), editor.pack_errors()
    finally:
        editor.close()


def test_a_users_own_graph_is_kept_on_reload(browser, make_run_server):
    editor = Editor.open(browser, make_run_server.url, fresh_user=True)
    try:
        _wait_for_first_graph(editor)
        # The user's own work: the stock default graph, with a changed prompt.
        editor.page.evaluate(
            """async () => {
              await app.loadGraphData();
              const encode = app.graph.nodes.find((n) => n.type === "CLIPTextEncode");
              encode.widgets[0].value = "my own prompt";
              // What the editor does after a user's edit: compare, record, save to the browser's storage.
              app.extensionManager.workflow.activeWorkflow.changeTracker.checkState();
            }"""
        )
        editor.page.wait_for_function(
            "() => (localStorage.getItem('workflow') ?? '').includes('my own prompt')", timeout=10_000
        )
        editor.page.reload(wait_until="domcontentloaded")
        editor.page.wait_for_function("() => window.app && app.graph && app.graph.nodes.length > 0", timeout=60_000)
        editor.page.wait_for_timeout(500)
        texts = editor.page.evaluate(
            "() => app.graph.nodes.filter((n) => n.type === 'CLIPTextEncode').map((n) => n.widgets[0].value)"
        )
        assert "my own prompt" in texts, texts
        assert not editor.page.evaluate("() => app.graph.nodes.some((n) => n.type === 'DSLoadModel')")
    finally:
        editor.close()
