"""`make run` writes the demo models again when the code that writes them changed.

A base folder made by an older checkout lacks the demo files newer workflows
name (e.g. the FLUX.1 Fill split files); the stamp in the demo folder says
which demo-model code wrote it.
"""
from __future__ import annotations

from pathlib import Path

from harness import models


def test_no_demo_folder_is_not_outdated(tmp_path):
    assert not models.demo_outdated(tmp_path)


def test_a_demo_folder_without_or_with_another_stamp_is_outdated(tmp_path):
    folder = models.demo_dir(tmp_path)
    (folder / "checkpoints").mkdir(parents=True)
    assert models.demo_outdated(tmp_path)
    (folder / models.STAMP).write_text("0123456789abcdef\n", encoding="utf-8")
    assert models.demo_outdated(tmp_path)
    (folder / models.STAMP).write_text(models.demo_stamp() + "\n", encoding="utf-8")
    assert not models.demo_outdated(tmp_path)


def test_the_stamp_changes_with_a_new_or_changed_writer(tmp_path):
    """A new harness/models_<concept>.py (what adds demo files) or a changed builder changes the stamp."""
    import shutil

    real = Path(models.__file__).resolve().parent
    harness = tmp_path / "harness"
    harness.mkdir()
    for path in real.glob("models*.py"):
        shutil.copy(path, harness / path.name)
    for name in models._SOURCES:
        shutil.copy(real.parent / name, tmp_path / name)
    assert models.demo_stamp(harness) == models.demo_stamp()
    (harness / "models_new_concept.py").write_text("def write(models_dir, seed=0):\n    return []\n")
    added = models.demo_stamp(harness)
    assert added != models.demo_stamp()
    with open(tmp_path / "dit_tiny.py", "a", encoding="utf-8") as fh:
        fh.write("\n# a changed builder\n")
    assert models.demo_stamp(harness) not in (added, models.demo_stamp())
