"""Every code block of README.md, run as written against the server `make run` starts.

The server is started by scripts/run_comfyui.py itself (DS_PORT picks a free
port, DS_BASE_DIR a temporary base folder, which the script fills with its
demo models), once for all blocks. Blocks run in README order; the only
change made to a block is the port of `http://127.0.0.1:8188`. Which blocks
run and which are marked as not requests: harness/readme_blocks.py. A
README block that is neither fails here.

Each answer must have the expected status (200 unless marked) and be JSON;
an answer carrying a `prompt_id` must lead to a finished prompt with a PNG
in `/history` (read back through `/view`), and base64 `images` must decode
as pictures. A JSON excerpt shown after a block must be part of its answer.
"""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from harness.readme_blocks import MAKE_RUN_URL, ReadmeBlockError, readme_blocks

pytestmark = pytest.mark.integration

STATUS_MARK = "__readme_test_status__"
# curl as written, plus the status line after each answer (the block's own options are untouched).
CURL_PRELUDE = f"curl() {{ command curl -w '\\n{STATUS_MARK} %{{http_code}}\\n' \"$@\"; }}\n"
PROMPT_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
try:
    BLOCKS, BLOCKS_ERROR = readme_blocks(), None
except ReadmeBlockError as exc:  # reported by the test below, not as a collection error
    BLOCKS, BLOCKS_ERROR = [], str(exc)


@pytest.fixture(scope="module")
def make_run(make_run_server):
    """`make run`'s own server (tests/conftest.py: one for the whole session)."""
    return make_run_server


def _wait_for_image(url: str, prompt_id: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        entry = requests.get(f"{url}/history/{prompt_id}", timeout=30).json().get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        assert time.monotonic() < deadline, f"prompt {prompt_id} not finished after {timeout:.0f} s"
        time.sleep(0.5)
    assert entry["status"].get("status_str") == "success", entry["status"]
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert images, f"prompt {prompt_id} saved no image: {entry['outputs']}"
    for image in images:
        picture = requests.get(f"{url}/view", params=image, timeout=30)
        assert picture.status_code == 200 and picture.content[:8] == b"\x89PNG\r\n\x1a\n", image


def _check_answer(url: str, answer) -> int:
    """The checks an answer's content allows; how many were made."""
    checks = 0
    if isinstance(answer, dict) and isinstance(answer.get("prompt_id"), str):
        _wait_for_image(url, answer["prompt_id"])
        checks += 1
    for data in answer.get("images") or [] if isinstance(answer, dict) else []:
        Image.open(io.BytesIO(base64.b64decode(data))).load()
        checks += 1
    return checks


def _contains(real, shown, where="answer") -> None:
    """Every key and value of the README's excerpt `shown` is in `real` (lists item by item)."""
    if isinstance(shown, dict):
        assert isinstance(real, dict), f"{where}: the README shows an object, the server answers {real!r}"
        for key, value in shown.items():
            assert key in real, f"{where}: the README shows {key!r}, the answer lacks it (has {sorted(real)[:40]})"
            _contains(real[key], value, f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(real, list) and len(real) >= len(shown), f"{where}: {real!r} vs the README's {shown!r}"
        for index, value in enumerate(shown):
            _contains(real[index], value, f"{where}[{index}]")
    else:
        assert real == shown, f"{where}: the server answers {real!r}, the README shows {shown!r}"


def _run_curl(block, url: str, cwd) -> list[tuple[int, object]]:
    script = CURL_PRELUDE + block.text.replace(MAKE_RUN_URL, url)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{block.name} exited {done.returncode}: {done.stderr[-2000:]}"
    answers = []
    pieces = re.split(rf"\n{STATUS_MARK} (\d+)\n", done.stdout)
    for body, status in zip(pieces[0::2], pieces[1::2]):
        try:
            answers.append((int(status), json.loads(body)))
        except ValueError:
            raise AssertionError(f"{block.name}: the answer is not JSON: {body[:1000]!r}") from None
    assert answers, f"{block.name}: no answer: {done.stdout[-1000:]!r} {done.stderr[-1000:]!r}"
    return answers


def _run_python(block, url: str, cwd) -> list[tuple[int, object]]:
    done = subprocess.run([sys.executable, "-c", block.text.replace(MAKE_RUN_URL, url)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{block.name} exited {done.returncode}: {done.stderr[-2000:]}"
    answers = [(200, {"prompt_id": prompt_id}) for prompt_id in PROMPT_ID.findall(done.stdout)]
    for path in sorted(cwd.iterdir()):
        with Image.open(path) as picture:  # every file a snippet writes is a picture here
            picture.load()
        answers.append((200, {"file": path.name}))
    assert answers, f"{block.name} printed no prompt id and wrote no picture: {done.stdout[-1000:]!r}"
    return answers


@pytest.mark.parametrize("block", [block for block in BLOCKS if block.kind in ("curl", "python")],
                         ids=lambda block: block.name)
def test_readme_request_runs_as_written(block, make_run, tmp_path):
    run = _run_curl if block.kind == "curl" else _run_python
    answers = run(block, make_run.url, tmp_path)
    for status, answer in answers:
        assert status == block.status, f"{block.name} answered {status}, not {block.status}: {str(answer)[:2000]}"
        if status == 200:
            checks = _check_answer(make_run.url, answer) + (block.kind == "python") + len(block.answers)
            assert checks, (f"{block.name}: nothing in the answer to check (no prompt_id, no images): show an "
                            f"excerpt after it in a <!-- readme-test: answer --> block: {str(answer)[:500]}")
    for shown in block.answers:
        _contains(answers[-1][1], json.loads(shown.text), f"{shown.name}")
    assert make_run.is_running()


def test_every_readme_block_is_runnable_or_marked():
    """The README's blocks as collected above; the rule itself is tested on made-up READMEs below."""
    assert BLOCKS_ERROR is None, BLOCKS_ERROR
    kinds = [block.kind for block in BLOCKS]
    assert "curl" in kinds and "python" in kinds and "setup" in kinds


@pytest.mark.parametrize("text, error", [
    ("```yaml\nkey: 1\n```\n", "neither a runnable request"),
    ("```bash\ndocker run x\n```\n", "neither a runnable request"),
    ("<!-- readme-test: setup -->\n```bash\ncurl -s http://127.0.0.1:8188/prompt\n```\n", "not an install"),
    ("<!-- readme-test: text -->\n```\ncurl -s http://127.0.0.1:8188/x\n```\n", "holds a request"),
    ("```bash\ncurl -s http://example.com/\n```\n", "make run's server"),
    ("<!-- readme-test: skip -->\n```bash\nls\n```\n", "unknown marker"),
    ("<!-- readme-test: answer -->\n```json\n{}\n```\n", "must follow a runnable block"),
])
def test_a_block_neither_runnable_nor_marked_fails(text, error):
    with pytest.raises(ReadmeBlockError, match=error):
        readme_blocks(text)
