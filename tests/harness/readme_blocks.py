"""The fenced code blocks of README.md, each with what the README test must do with it.

Every block is either run against `make run`'s server or explicitly marked
as not a request; nothing is skipped silently. The rule, by the block's
language and an HTML comment on the line before its fence (invisible on
GitHub):

- ```bash / sh / shell / console with `curl` commands: run as written
  (only the port is changed), each answer checked.
- ```python: run as written with the environment's Python.
- `<!-- readme-test: expect 422 -->` before a runnable block: the status it
  must answer instead of 200 (an example of a mistake).
- `<!-- readme-test: answer -->` before a ```json block: an excerpt of what
  the runnable block before it answers; every key and value it shows must be
  in the real answer.
- `<!-- readme-test: setup -->` before a shell block: install or start-up
  steps, not run; every command must start with one of SETUP_COMMANDS.
- `<!-- readme-test: text -->`: not code (a folder tree); it may not hold a
  request.

Anything else is an error, so a new block must be made runnable or marked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

README = Path(__file__).resolve().parent.parent.parent / "README.md"
FENCE = re.compile(r"^(```|~~~)\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->$")
SHELL = {"bash", "sh", "shell", "console"}
SETUP_COMMANDS = ("cd", "git", "pip", "make")
MAKE_RUN_URL = "http://127.0.0.1:8188"


class ReadmeBlockError(ValueError):
    """A block the rule above does not cover (neither runnable nor marked, or marked wrongly)."""


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: Optional[str]
    kind: str = ""  # "curl", "python", "setup", "text"
    status: int = 200
    answers: list["Block"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"README.md:{self.line}:{self.lang or 'text'}"


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block with the marker comment on the nearest non-blank line above its fence."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        above = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = MARKER.match(above)
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == opening.group(1)), None)
        if end is None:
            raise ReadmeBlockError(f"README.md:{index + 1}: a code block is never closed")
        blocks.append(Block(index + 1, opening.group(2).lower(), "\n".join(lines[index + 1:end]),
                            marker.group(1) if marker else None))
        index = end + 1
    return blocks


def _commands(text: str) -> list[str]:
    """Shell commands: a newline ends one unless it is inside quotes or after a backslash; comments dropped."""
    commands, current, quote, index = [], [], None, 0
    while index < len(text):
        char = text[index]
        if quote is None and char == "\\" and text[index + 1:index + 2] == "\n":
            current.append(" ")
            index += 2
            continue
        if quote is None and char == "#" and (not current or current[-1].isspace()):
            end = text.find("\n", index)
            index = len(text) if end < 0 else end
            continue
        if quote is None and char in "'\"":
            quote = char
        elif char == quote:
            quote = None
        if char == "\n" and quote is None:
            commands.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    commands.append("".join(current))
    return [command.strip() for command in commands if command.strip() and not command.strip().startswith("#")]


def classify(block: Block) -> Block:
    """Set the block's kind (and expected status), or raise saying what to do with it."""
    marker = block.marker or ""
    if marker == "setup":
        if block.lang not in SHELL:
            raise ReadmeBlockError(f"{block.name}: 'setup' marks shell blocks only")
        for command in _commands(block.text):
            if command.split()[0] not in SETUP_COMMANDS:
                raise ReadmeBlockError(f"{block.name}: {command!r} is not an install/start-up step "
                                       f"({', '.join(SETUP_COMMANDS)}); make it a runnable block instead")
        block.kind = "setup"
    elif marker == "text":
        if "curl " in block.text or MAKE_RUN_URL in block.text:
            raise ReadmeBlockError(f"{block.name}: marked 'text' but holds a request; make it runnable")
        block.kind = "text"
    elif marker == "answer":
        if block.lang != "json":
            raise ReadmeBlockError(f"{block.name}: 'answer' marks json blocks only")
        block.kind = "answer"
    elif marker and not marker.startswith("expect "):
        raise ReadmeBlockError(f"{block.name}: unknown marker 'readme-test: {marker}' "
                               "(setup, text, answer, expect <status>)")
    else:
        if block.lang in SHELL and all(command.startswith("curl ") for command in _commands(block.text) or ["x"]):
            block.kind = "curl"
        elif block.lang == "python":
            block.kind = "python"
        else:
            raise ReadmeBlockError(
                f"{block.name}: a ```{block.lang} block that is neither a runnable request (curl commands, "
                "python) nor marked with <!-- readme-test: setup|text|answer --> on the line above it")
        if MAKE_RUN_URL not in block.text:
            raise ReadmeBlockError(f"{block.name}: a request must go to make run's server, {MAKE_RUN_URL}")
        if marker:
            block.status = int(marker.split()[1])
    return block


def readme_blocks(text: Optional[str] = None) -> list[Block]:
    """The README's blocks, classified; answer excerpts attached to the runnable block before them."""
    blocks = [classify(block) for block in fenced_blocks(README.read_text(encoding="utf-8") if text is None else text)]
    kept: list[Block] = []
    for block in blocks:
        if block.kind == "answer":
            if not kept or kept[-1].kind not in ("curl", "python"):
                raise ReadmeBlockError(f"{block.name}: an answer excerpt must follow a runnable block")
            kept[-1].answers.append(block)
        else:
            kept.append(block)
    return kept
