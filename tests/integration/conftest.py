"""Fixtures for the integration tests: one real ComfyUI server per session.

The server is started once (about 10-20 s with the pack's imports) in a
temporary base directory holding the pack (symlinked), the tiny models under
their real names, and the test pictures. Tests share it as users share one
server; each test waits for an empty queue first so runs do not overlap.

When a test fails, the part of the server log written during that test is
attached to its report: most failures are explained there (a traceback in a
node), and the server runs in another process, so pytest would not show it.
"""
from __future__ import annotations

import traceback
from typing import Optional

import pytest

from harness import models, server
from harness.client import ComfyClient

_SERVER_KEY = pytest.StashKey[server.ComfyServer]()
_LOG_OFFSET_KEY = pytest.StashKey[int]()


class _Session:
    """The session's server, or why there is none (reported once in full)."""

    def __init__(self):
        self.server: Optional[server.ComfyServer] = None
        self.client: Optional[ComfyClient] = None
        self.error: Optional[str] = None
        self.error_reported = False
        self.cache: dict = {}  # results several tests read (one run, many checks)

    def require(self) -> server.ComfyServer:
        if self.error:
            if self.error_reported:
                pytest.fail("no ComfyUI server for this session (see the first error above)", pytrace=False)
            self.error_reported = True
            pytest.fail(self.error, pytrace=False)
        return self.server


@pytest.fixture(scope="session")
def comfy_session(request, tmp_path_factory) -> _Session:
    """Start ComfyUI with the pack once; stop it (with its children) at the end.

    A failure to start is not raised here (pytest would repeat it, log and
    all, for every test) but handed to the function fixtures below, which
    report it in full once and briefly afterwards.
    """
    session = _Session()
    running = None
    try:
        server.comfyui_path()  # COMFYUI_PATH first: the tiny models need its tokenizer
        root = tmp_path_factory.mktemp("comfyui")
        base_dir = server.prepare_base_dir(root / "base")
        models.write_tiny_models(base_dir / "models")
        running = server.start_server(base_dir, root / "server.log")
        problems = server.pack_import_problems(running.log_text())
        if problems:
            session.error = (
                "Diffusers Studio did not import into ComfyUI:\n"
                + "\n".join(problems)
                + f"\n--- server log (tail) ---\n{running.log_tail(150)}"
            )
        else:
            session.server, session.client = running, ComfyClient(running.url)
            request.config.stash[_SERVER_KEY] = running  # failing tests get its log attached
    except server.ServerError as exc:
        session.error = str(exc)
    except Exception:  # e.g. writing the tiny models failed: still report once, plainly
        session.error = "could not prepare the ComfyUI server:\n" + traceback.format_exc()
    try:
        yield session
    finally:
        if running is not None:
            running.stop()


@pytest.fixture
def comfy_server(comfy_session) -> server.ComfyServer:
    """The running ComfyUI (the pack loaded, tiny models in its models folder)."""
    return comfy_session.require()


@pytest.fixture
def comfy(comfy_session) -> ComfyClient:
    """A client for the session's server."""
    comfy_session.require()
    return comfy_session.client


@pytest.fixture
def idle_comfy(comfy, comfy_server) -> ComfyClient:
    """The client, after the queue has drained and with the server still alive."""
    assert comfy_server.is_running(), f"ComfyUI has died:\n{comfy_server.log_tail()}"
    comfy.wait_idle()
    return comfy


@pytest.fixture
def object_info(comfy) -> dict:
    """The server's /object_info (fetched once per session)."""
    return comfy.object_info()


@pytest.fixture
def session_cache(comfy_session) -> dict:
    """A dict kept for the whole session, for runs that several tests inspect."""
    return comfy_session.cache


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    running = item.config.stash.get(_SERVER_KEY, None)
    if running is not None:
        item.stash[_LOG_OFFSET_KEY] = running.log_size()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when not in ("setup", "call") or not report.failed:
        return
    running = item.config.stash.get(_SERVER_KEY, None)
    if running is None:
        return
    offset = item.stash.get(_LOG_OFFSET_KEY, None)
    text = running.log_since(offset) if offset is not None else running.log_tail(120)
    lines = text.splitlines()
    if len(lines) > 300:
        lines = ["[...]"] + lines[-300:]
    header = f"(the whole log: {running.log_path})"
    body = "\n".join(lines) if lines else "(nothing logged during this test)"
    report.sections.append(("ComfyUI server log", f"{header}\n{body}"))
