"""Every shipped workflow, opened in the real editor and run with its Run button.

The files in example_workflows/ are found by glob, so a new workflow is
tested the day it lands. Each is opened as the Templates menu opens it
(`app.loadGraphData`), must raise no missing-nodes dialog and hold no widget
value its node does not offer (a model name not in the list, a number out of
range: what the editor shows in red or refuses at queue time), and is then
queued with the Run button until the Save Image node shows the picture.

For a CPU, the loaded graph's widgets are made smaller before Run, as
tests/integration/test_example_workflows.py does for the API format
(harness.prompts.shrink): every EmptyLatentImage at 64x64 with batch 1 and
every DSSampler at most 3 steps. Nothing else changes. The models are the
harness's tiny random-weight ones under the real file names.

A picture of each workflow as opened, and one after its run, goes to
test-artifacts/browser/ for a person to look at.
"""
from __future__ import annotations

import json

import pytest
from PIL import Image

from harness.workflow_api import example_workflow_files

pytestmark = pytest.mark.integration

TEST_SIZE = 64
MAX_STEPS = 3
WORKFLOWS = example_workflow_files()
IDS = [path.name for path in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_shipped_workflow_opens_and_runs_from_the_editor(path, editor, idle_comfy, artifacts_dir):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    report = editor.load_workflow(workflow, path.stem)
    editor.screenshot_graph(artifacts_dir / f"{path.stem}.png", clean=False)

    assert not report["dialogs"], f"{path.name}: a dialog opened on load:\n" + "\n---\n".join(report["dialogs"])
    assert not report["missing"], f"{path.name}: node types the editor does not know: {report['missing']}"
    assert not report["invalid"], f"{path.name}: invalid widget values:\n" + "\n".join(report["invalid"])
    assert len(report["nodes"]) == len(workflow["nodes"]), f"{path.name}: nodes lost on load"

    editor.shrink(size=TEST_SIZE, max_steps=MAX_STEPS)
    state = editor.queue_and_wait(timeout=180)
    editor.screenshot_graph(artifacts_dir / f"{path.stem}-run.png", clean=False)

    assert not state.get("timed_out"), f"{path.name}: no picture shown within the time limit: {state}"
    assert not state["nodeErrors"], f"{path.name}: the server refused the prompt: {state['nodeErrors']}"
    assert not state["executionError"], f"{path.name}: the run failed: {state['executionError']}"
    assert state["done"], state
    for output in state["shown"]:
        for image in output["images"]:
            assert image["width"] > 0 and image["height"] > 0, output
    # The pictures shown come from the server's output folder, through /view.
    assert all("/view?" in image["src"] for output in state["shown"] for image in output["images"]), state


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_shipped_workflow_has_a_thumbnail(path):
    """The Templates menu shows `<name>.jpg` next to the workflow (scripts/make_thumbnails.py writes it)."""
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), (
        f"{thumbnail.name} is missing: run `make thumbnails` (scripts/make_thumbnails.py) to take it in the editor"
    )
    with Image.open(thumbnail) as picture:
        assert picture.format == "JPEG", picture.format
        assert picture.width >= 256 and picture.height >= 128, picture.size
