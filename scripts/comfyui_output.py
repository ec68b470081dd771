"""ComfyUI's start-up output, without the torchaudio noise, for `make run`.

torchaudio has no build on the package registry for the torch this
environment pins, so it is not installed, and at every start ComfyUI prints
two `ModuleNotFoundError: No module named 'torchaudio'` tracebacks (its
nodes_audio.py and nodes_audio_encoder.py), "torchaudio missing, ... will be
broken" warnings and an "IMPORT FAILED" block asking to `pip install -r
requirements.txt`, which would not help. A newcomer reads that as a broken
install. `TorchaudioNoise` drops exactly those lines and says once, in one
line, why they are gone; every other line, other tracebacks and other
IMPORT FAILED entries included, passes through unchanged and in order.

It works on lines as ComfyUI writes them (a traceback is one log record of
several lines), holding back only a traceback until its last line shows
what it is, and the IMPORT FAILED block until its end shows which entries
it lists.
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator, Optional

MISSING = "ModuleNotFoundError: No module named 'torchaudio'"
_WARNING = re.compile(r"^torchaudio missing, .* will be broken$")
_CANNOT_IMPORT = re.compile(r"^Cannot import (?P<path>.+) module for custom nodes: No module named 'torchaudio'$")
_IMPORT_FAILED = re.compile(r"^IMPORT FAILED: (?P<name>\S+)$")
_BLOCK_START = "WARNING: some comfy_extras/ nodes did not import correctly."
_BLOCK_END = "Please do a: pip install -r requirements.txt"
_TRACEBACK = "Traceback (most recent call last):"


def note(torch_version: str = "") -> str:
    on = f" {torch_version}" if torch_version else ""
    return (
        f"torchaudio is not installed (the package registry has no build for this torch{on}), so ComfyUI's "
        "audio nodes (nodes_audio.py, nodes_audio_encoder.py) are off; Diffusers Studio does not use them."
    )


class TorchaudioNoise:
    """Feed lines (without their newline) to `feed`; it returns the lines to show."""

    def __init__(self, torch_version: str = ""):
        self.note_text = note(torch_version)
        self.noted = False
        self.failed_for_torchaudio: set[str] = set()
        self._traceback: Optional[list[str]] = None
        self._block: Optional[list[str]] = None
        self._drop_blank = False

    def _note(self) -> list[str]:
        if self.noted:
            return []
        self.noted = True
        return [self.note_text]

    def feed(self, line: str) -> list[str]:
        if self._traceback is not None:
            return self._in_traceback(line)
        if self._block is not None:
            return self._in_block(line)
        if self._drop_blank:
            self._drop_blank = False
            if not line.strip():
                return []
        if line == _TRACEBACK:
            self._traceback = [line]
            return []
        if line.startswith(_BLOCK_START):
            self._block = [line]
            return []
        if _WARNING.match(line):
            return self._note()
        found = _CANNOT_IMPORT.match(line)
        if found:
            self.failed_for_torchaudio.add(re.split(r"[\\/]", found["path"])[-1])
            self._drop_blank = False
            return self._note()
        return [line]

    def _in_traceback(self, line: str) -> list[str]:
        held = self._traceback
        held.append(line)
        if line.startswith(" ") or line == _TRACEBACK:
            return []  # a frame (or a chained traceback's header)
        self._traceback = None
        if line == MISSING:
            self._drop_blank = True  # ComfyUI's log record ends with an empty line
            return self._note()
        return held

    def _in_block(self, line: str) -> list[str]:
        self._block.append(line)
        if line != _BLOCK_END:
            return []
        block, self._block = self._block, None
        kept = [
            entry for entry in block
            if not ((m := _IMPORT_FAILED.match(entry)) and m["name"] in self.failed_for_torchaudio)
        ]
        if any(_IMPORT_FAILED.match(entry) for entry in kept):
            return kept  # other modules failed too: the block stays, less the torchaudio entries
        self._drop_blank = True
        return self._note()

    def flush(self) -> list[str]:
        """What is still held back (the stream ended mid-traceback or mid-block)."""
        held = (self._traceback or []) + (self._block or [])
        self._traceback = self._block = None
        return held


def filtered(lines: Iterable[str], torch_version: str = "") -> Iterator[str]:
    """`lines` without the torchaudio noise (see the module docstring)."""
    noise = TorchaudioNoise(torch_version)
    for line in lines:
        yield from noise.feed(line)
    yield from noise.flush()
