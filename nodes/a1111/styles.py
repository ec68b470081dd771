"""A1111's prompt styles: styles.csv, and the `styles` field of txt2img/img2img.

The file is A1111's own format, so a user can copy theirs over: a CSV with a
header naming at least `name`, `prompt` and `negative_prompt`. It lives in
ComfyUI's user folder, next to the API's settings:
`<user directory>/default/diffusers_studio/styles.csv`.

A style's text merges into the prompt as A1111 merges it: where the style has
`{prompt}`, the prompt is put there; otherwise the style is appended after a
comma. Several styles apply in the order given; the negative prompt the same
way with the style's negative_prompt.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

log = logging.getLogger(__name__)

FILE_NAME = "styles.csv"
MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompt(style_text: str, prompt: str) -> str:
    """A1111's rule: `{prompt}` is replaced by the prompt, else the style is appended after ", "."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative: str, names: Sequence[str], styles: dict) -> tuple[str, str]:
    """(prompt, negative) with the named styles merged in; ValueError naming an unknown style."""
    for name in names:
        style = styles.get(name)
        if style is None:
            known = ", ".join(sorted(styles)[:20]) or "none"
            raise ValueError(
                f"styles: {name!r} is not a style in {FILE_NAME} (ComfyUI's user folder, "
                f"default/diffusers_studio/{FILE_NAME}); available: {known}"
            )
        prompt = merge_prompt(style.prompt, prompt)
        negative = merge_prompt(style.negative_prompt, negative)
    return prompt, negative


def parse_styles(text: str) -> dict:
    """name -> Style from A1111's CSV; rows without a name are skipped."""
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    if reader.fieldnames is None or "name" not in reader.fieldnames:
        raise ValueError(f"{FILE_NAME}: the first line must name the columns: name,prompt,negative_prompt")
    styles: dict = {}
    for row in reader:
        name = (row.get("name") or "").strip()
        if name:
            styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


class StylesFile:
    """styles.csv, read again whenever it changes on disk."""

    def __init__(self, path: Optional[str] = None):
        self._path = path
        self._lock = threading.Lock()
        self._stamp = None
        self._styles: dict = {}

    @property
    def path(self) -> str:
        if self._path is None:
            import folder_paths

            self._path = os.path.join(folder_paths.get_user_directory(), "default", "diffusers_studio", FILE_NAME)
        return self._path

    def all(self) -> dict:
        with self._lock:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                self._stamp, self._styles = None, {}
                return {}
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._styles = self._read(stat.st_size)
                self._stamp = stamp
            return dict(self._styles)

    def _read(self, size: int) -> dict:
        if size > MAX_FILE_BYTES:
            log.warning("%s is larger than %s bytes; styles ignored", self.path, MAX_FILE_BYTES)
            return {}
        try:
            with open(self.path, encoding="utf-8-sig", newline="") as handle:
                return parse_styles(handle.read())
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
            log.warning("could not read %s (%s); no styles", self.path, exc)
            return {}


store = StylesFile()

__all__ = ["FILE_NAME", "Style", "StylesFile", "apply_styles", "merge_prompt", "parse_styles", "store"]
