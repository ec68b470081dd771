"""The editor with the pack, in headless Chromium against the real server.

What a user meets first: the editor loads the pack's frontend code without
an error, the pack's nodes look like their family, the node search finds
every DS node by the name shown on it, and the Templates menu lists the
shipped workflows under the pack's name and opens them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.server import PACK_NAME
from harness.workflow_api import example_workflow_files

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
WEB_JS = sorted((REPO_ROOT / "web" / "js").rglob("*.js"))
WORKFLOWS = example_workflow_files()


def ds_nodes(object_info: dict) -> dict[str, dict]:
    """The pack's nodes as the server lists them: node id -> schema."""
    return {
        name: info
        for name, info in object_info.items()
        if info.get("python_module") == f"custom_nodes.{PACK_NAME}" and name.startswith("DS")
    }


def test_the_editor_loads_the_pack_without_errors(fresh_editor):
    """Every file under web/js/ is served and imported; nothing of the pack in the console's errors."""
    fresh_editor.page.wait_for_timeout(500)  # extensions' setup() runs after the graph exists
    served = {url.split("/extensions/", 1)[1]: status for status, url in fresh_editor.pack_responses()}
    for path in WEB_JS:
        key = f"{PACK_NAME}/{path.relative_to(REPO_ROOT / 'web').as_posix()}"
        assert served.get(key) == 200, f"{key} was not loaded by the editor (responses: {served})"
    errors = fresh_editor.pack_errors()
    assert not errors, "the pack's frontend logged errors:\n" + "\n".join(map(str, errors))
    registered = fresh_editor.page.evaluate("() => (app.extensions ?? []).map((e) => e.name)")
    assert "DiffusersStudio.NodeColours" in registered


def test_pack_nodes_get_their_family_colour_and_others_do_not(editor, object_info):
    """A new DS node is coloured by its family; a native node keeps the default look."""
    nodes = ds_nodes(object_info)
    assert nodes, "the server lists no DS node"
    created = editor.page.evaluate(
        """(types) => {
          app.graph.clear();
          const result = {};
          for (const type of types) {
            const node = LiteGraph.createNode(type);
            app.graph.add(node);
            result[type] = { color: node.color ?? null, bgcolor: node.bgcolor ?? null };
          }
          return result;
        }""",
        [*nodes, "EmptyLatentImage"],
    )
    uncoloured = [name for name in nodes if not created[name]["color"] or not created[name]["bgcolor"]]
    assert not uncoloured, f"DS nodes without a family colour: {uncoloured} ({created})"
    by_family: dict[str, set] = {}
    for name, info in nodes.items():
        by_family.setdefault(info["category"], set()).add(created[name]["bgcolor"])
    assert all(len(colours) == 1 for colours in by_family.values()), f"one family, several colours: {by_family}"
    assert created["EmptyLatentImage"] == {"color": None, "bgcolor": None}, created["EmptyLatentImage"]


def test_node_search_finds_every_pack_node_by_its_display_name(editor, object_info):
    """The search box: type the display name, the pack's node is offered, choosing it adds it."""
    page = editor.page
    problems = []
    for name, info in sorted(ds_nodes(object_info).items()):
        display = info["display_name"]
        page.evaluate("() => app.graph.clear()")
        editor.command("Workspace.SearchBox.Toggle")
        search = page.locator(".comfy-vue-node-search-container input").first
        search.wait_for(state="visible", timeout=10_000)
        search.fill(display)
        options = page.locator("li.p-autocomplete-option")
        try:
            options.first.wait_for(state="visible", timeout=10_000)
        except Exception:  # noqa: BLE001 - reported below with what was on the screen
            problems.append(f"{name}: no result for '{display}'")
            page.keyboard.press("Escape")
            continue
        page.wait_for_timeout(300)  # the list settles on the final query
        # A native node may share the display name: pick the entry of the pack
        # (its category is shown with it), as a user reading the list would.
        ours = options.filter(has_text=info["category"].replace("/", " > "))
        if not ours.count():
            texts = [text.replace("\n", " | ") for text in options.all_inner_texts()[:5]]
            problems.append(f"{name}: '{display}' offers no Diffusers Studio entry: {texts}")
            page.keyboard.press("Escape")
            continue
        ours.first.click()
        page.wait_for_timeout(200)
        added = page.evaluate("() => app.graph.nodes.map((n) => n.type)")
        if added != [name]:
            problems.append(f"{name}: choosing '{display}' added {added}")
        editor.close_dialogs()
    assert not problems, "\n".join(problems)


def _template_card(page, dialog, stem: str):
    """The dialog's card for a template; it shows 24 cards a page and loads the next page when scrolled
    to the end, so scroll the last card into view until this one is rendered."""
    card = dialog.locator(f'[data-testid="template-workflow-{stem}"]')
    for _ in range(10):
        if card.count():
            break
        dialog.locator('[data-testid^="template-workflow-"]').last.scroll_into_view_if_needed()
        page.mouse.wheel(0, 4000)
        page.wait_for_timeout(500)
    return card


def test_templates_menu_lists_the_shipped_workflows_under_the_pack(editor, comfy):
    """GET /workflow_templates lists them; the Templates dialog shows them under the pack and opens one."""
    listing = comfy.get("/api/workflow_templates").json()
    assert sorted(listing.get(PACK_NAME, [])) == sorted(path.stem for path in WORKFLOWS), listing

    page = editor.page
    editor.command("Comfy.BrowseTemplates")
    dialog = page.locator(".p-dialog").last
    try:
        dialog.get_by_text(PACK_NAME, exact=True).first.click()
        for path in WORKFLOWS:
            _template_card(page, dialog, path.stem).wait_for(state="visible", timeout=10_000)
        first = WORKFLOWS[0]
        _template_card(page, dialog, first.stem).click()
        page.wait_for_function("() => !document.querySelector('.p-dialog')", timeout=15_000)
    finally:  # a dialog left open would fail every later browser test on "a dialog opened on load"
        editor.close_dialogs()
    shipped = json.loads(first.read_text(encoding="utf-8"))
    loaded = sorted(editor.page.evaluate("() => app.graph.nodes.map((n) => n.id)"))
    assert loaded == sorted(node["id"] for node in shipped["nodes"]), f"{first.name} did not open from the menu"
    report = editor.graph_report()
    assert not report["missing"] and not report["dialogs"], report
