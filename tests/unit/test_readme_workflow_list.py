"""The README's "Shipped workflows" table names every workflow in example_workflows/ and only those.

The table is how a reader finds which files a workflow expects before opening
it; a workflow added or renamed without its row would silently drop out of it.
The model files each row names are checked against the workflow's loaders, so
a row cannot promise files the workflow does not use.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOADERS = ("DSLoadModel", "DSLoadSplitModel", "DSLoadControlNet", "DSLoadLoRA", "DSLoadIPAdapter")
NOT_FILES = {"auto", "none", "float32", "float16", "bfloat16"}


def _rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Shipped workflows", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([a-z0-9_]+)` \|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def _loader_files(path: Path) -> set[str]:
    workflow = json.loads(path.read_text(encoding="utf-8"))
    files = set()
    for node in workflow["nodes"]:
        if node["type"] in LOADERS:
            files |= {v for v in node["widgets_values"] if isinstance(v, str) and v not in NOT_FILES}
    return files


def test_every_shipped_workflow_has_a_row_and_every_row_a_workflow():
    shipped = {path.stem for path in (ROOT / "example_workflows").glob("*.json")}
    rows = _rows()
    assert set(rows) == shipped, {"missing rows": sorted(shipped - set(rows)), "no such workflow": sorted(set(rows) - shipped)}


def test_each_row_names_only_files_its_workflow_loads():
    files_of = {path.stem: _loader_files(path) for path in (ROOT / "example_workflows").glob("*.json")}
    everything = set().union(*files_of.values())
    for name, line in _rows().items():
        named = set(re.findall(r"`([^`]+\.safetensors|[A-Za-z0-9._-]+-[A-Za-z0-9._-]+)`", line)) - {name}
        named = {n for n in named if n in everything or n.endswith(".safetensors")}
        assert named <= files_of[name], f"{name}: the README names {sorted(named - files_of[name])}, not in the workflow"
