"""Fixtures for the browser tests: the real server, headless Chromium, the editor.

The ComfyUI server is the integration suite's: the same fixtures (one server
per session in a temporary base directory, the pack symlinked, the tiny
models under their real names, the server log attached to a failing test's
report) are imported from `tests/integration/conftest.py`, not copied.

Chromium is Debian's package (`scripts/ensure_chromium.sh` installs it where
apt works; CHROMIUM_PATH may name another binary), driven by Python
Playwright. Without Chromium or Playwright every test here that needs the
browser is skipped, with the reason in the summary; nothing else skips them.

Screenshots go to `test-artifacts/browser/` (gitignored), one per workflow
opened in the editor, so a person can look at what the tests saw.
"""
from __future__ import annotations

from pathlib import Path

import pytest

# The server fixtures and their log-attaching hooks, shared with tests/integration.
from integration.conftest import (  # noqa: F401  (fixtures and hooks, used by name)
    comfy,
    comfy_server,
    comfy_session,
    idle_comfy,
    object_info,
    pytest_runtest_call,
    pytest_runtest_makereport,
)

from browser.editor import Editor, chromium_path, launch_browser

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts" / "browser"


def _skip_reason() -> str | None:
    if chromium_path() is None:
        return (
            "Chromium is not installed (no /usr/bin/chromium, CHROMIUM_PATH unset): "
            "run `bash scripts/ensure_chromium.sh` (apt-get install chromium) to run the browser tests"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python playwright is not installed (requirements-dev.txt): pip install playwright"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _skip_reason()
    if reason is None:
        return
    here = Path(__file__).resolve().parent
    for item in items:
        uses_browser = "browser" in getattr(item, "fixturenames", ())
        if uses_browser and here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium for the whole session."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = launch_browser(playwright, chromium_path())
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="session")
def _session_editor(browser, comfy_session):
    """One editor page for the session (opening the editor takes seconds)."""
    running = comfy_session.require()
    editor = Editor.open(browser, running.url)
    try:
        yield editor
    finally:
        editor.close()


@pytest.fixture
def editor(_session_editor, comfy_server) -> Editor:
    """The session's editor page, no dialog open, ready for the next test."""
    assert comfy_server.is_running(), f"ComfyUI has died:\n{comfy_server.log_tail()}"
    _session_editor.close_dialogs()
    return _session_editor


@pytest.fixture
def fresh_editor(browser, comfy_server):
    """A new page with the editor just opened: for what happens while it loads."""
    editor = Editor.open(browser, comfy_server.url)
    try:
        yield editor
    finally:
        editor.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
