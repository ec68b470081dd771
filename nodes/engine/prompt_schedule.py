"""A1111's prompt editing and alternation, parsed into a per-step schedule.

`[from:to:when]` draws `from` until step `when`, then `to`; `[to:when]` adds
`to` from then on and `[from::when]` removes `from`; `[a|b|c]` cycles through
its options one step at a time. They nest, and emphasis `(x:1.2)` and BREAK
inside them stay as text for the attention parser (prompt_weights.py), which
reads each scheduled text afterwards. The result has the shape of A1111's
`get_learned_conditioning_prompt_schedules`: a list of (end_step, text) whose
last end_step is the step count; a sampler at step index i (0-based, counted
over the steps it runs) uses the first entry whose end_step >= i, as A1111's
`reconstruct_cond_batch` does (so `[a:b:10]` draws `a` for steps 0-10).

The grammar is A1111's (a lark grammar there), written as a small memoised
recursive-descent parser with the same outcomes on A1111's documented
examples:

- inside brackets only well-formed syntax is allowed; at the top level a stray
  `[`, `]`, `(`, `)` or `:` is literal text;
- a `|` outside an alternation, or a lone trailing backslash, makes the whole
  prompt unparsable, and then it is used as written, with no scheduling at all
  (A1111 does the same);
- `when` is a signed number. From A1111 1.6 on, a number written with a
  decimal point is a fraction of the steps (`0.3`, `1.0`), one without is a
  step number; with `old_timelines` (A1111's "Use old prompt editing
  timelines") a number below 1 is a fraction and anything else a step;
- for a hires-fix pass (`first_pass_steps` given) step numbers count on from
  the first pass and fractions from 1 to 2 address the second pass, as in
  A1111 (`[a:b:1.5]` switches halfway through the hires steps).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

_NUMBER = re.compile(r"[+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+)")
_SPACE = re.compile(r"\s+")
_PLAIN_STOP = set("\\[]():|")
_STRAY = set("[]():")
MAX_DEPTH = 200  # deeper nesting is taken as text, not parsed (A1111 would recurse)

Schedule = list  # list[tuple[int, str]]


@dataclass(frozen=True)
class _Scheduled:
    before: Optional["_Seq"]
    after: "_Seq"
    when: str  # the number as written: its decimal point matters


@dataclass(frozen=True)
class _Alternate:
    options: tuple  # of _Seq


@dataclass(frozen=True)
class _Seq:
    parts: tuple  # of str | _Scheduled | _Alternate | _Seq


Node = Union[str, _Scheduled, _Alternate, _Seq]


class _Parser:
    """Packrat parser over one prompt; every method returns (node, end) or None."""

    def __init__(self, text: str):
        self.text = text
        self.memo: dict = {}

    # prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
    def prompt(self, i: int, depth: int) -> tuple:
        key = ("p", i)
        if key in self.memo:
            return self.memo[key]
        text, parts = self.text, []
        while i < len(text):
            char = text[i]
            if char in "([":
                found = self.group(i, depth + 1) if depth < MAX_DEPTH else None
                if found is None:
                    break
                node, i = found
                parts.append(node)
            elif char == "\\":
                if i + 1 >= len(text) or text[i + 1] == "\n":
                    break
                parts.append(text[i : i + 2])
                i += 2
            elif char in _PLAIN_STOP:
                break
            else:
                end = i
                while end < len(text) and text[end] not in _PLAIN_STOP:
                    end += 1
                parts.append(text[i:end])
                i = end
        result = (_Seq(tuple(parts)), i)
        self.memo[key] = result
        return result

    def group(self, i: int, depth: int):
        key = ("g", i)
        if key not in self.memo:
            self.memo[key] = self._paren(i, depth) if self.text[i] == "(" else self._bracket(i, depth)
        return self.memo[key]

    def _at(self, i: int, char: str) -> bool:
        return i < len(self.text) and self.text[i] == char

    # "(" prompt ")" | "(" prompt ":" prompt ")"
    def _paren(self, i: int, depth: int):
        inner, j = self.prompt(i + 1, depth)
        if self._at(j, ")"):
            return _Seq(("(", inner, ")")), j + 1
        if self._at(j, ":"):
            second, k = self.prompt(j + 1, depth)
            if self._at(k, ")"):
                return _Seq(("(", inner, ":", second, ")")), k + 1
        return None

    def _when(self, i: int):
        """[WHITESPACE] NUMBER [WHITESPACE] "]" at i: (number text, end) or None."""
        space = _SPACE.match(self.text, i)
        j = space.end() if space else i
        number = _NUMBER.match(self.text, j)
        if number is None:
            return None
        space = _SPACE.match(self.text, number.end())
        k = space.end() if space else number.end()
        return (number.group(0), k + 1) if self._at(k, "]") else None

    # "[" prompt "]" | scheduled | alternate
    def _bracket(self, i: int, depth: int):
        first, j = self.prompt(i + 1, depth)
        if self._at(j, "]"):
            return _Seq(("[", first, "]")), j + 1
        if self._at(j, "|"):
            options = [first]
            while self._at(j, "|"):
                option, j = self.prompt(j + 1, depth)
                options.append(option)
            if self._at(j, "]"):
                return _Alternate(tuple(options)), j + 1
            return None
        if self._at(j, ":"):
            when = self._when(j + 1)
            if when is not None:  # [to:when]
                return _Scheduled(None, first, when[0]), when[1]
            second, k = self.prompt(j + 1, depth)
            if self._at(k, ":"):
                when = self._when(k + 1)
                if when is not None:  # [from:to:when]
                    return _Scheduled(first, second, when[0]), when[1]
        return None

    # start: (prompt | /[][():]/+)*
    def start(self) -> Optional[_Seq]:
        parts, i = [], 0
        while i < len(self.text):
            node, j = self.prompt(i, 0)
            if node.parts:
                parts.append(node)
            if j < len(self.text):
                if self.text[j] not in _STRAY:
                    return None  # a stray "|" or a lone backslash: A1111's parse error
                parts.append(self.text[j])
                j += 1
            i = j
        return _Seq(tuple(parts))


def parse(prompt: str) -> Optional[_Seq]:
    """The prompt's tree, or None where A1111's grammar rejects it (used as written)."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected text, got {type(prompt).__name__}")
    try:
        return _Parser(prompt).start()
    except RecursionError:
        return None


def _walk(node: Node):
    yield node
    if isinstance(node, _Seq):
        for part in node.parts:
            yield from _walk(part)
    elif isinstance(node, _Scheduled):
        if node.before is not None:
            yield from _walk(node.before)
        yield from _walk(node.after)
    elif isinstance(node, _Alternate):
        for option in node.options:
            yield from _walk(option)


def has_editing(prompt: str) -> bool:
    """True when the prompt changes between steps ([a:b:when] or [a|b] somewhere)."""
    if "[" not in prompt:
        return False
    tree = parse(prompt)
    return tree is not None and any(isinstance(n, (_Scheduled, _Alternate)) for n in _walk(tree))


def _resolve(when: str, steps: int, int_offset: int, float_offset: float, old: bool) -> int:
    value = float(when)
    if old:
        value = value * steps if value < 1 else value
    elif "." in when:
        value = (value - float_offset) * steps
    else:
        value = value - int_offset
    return min(steps, int(value))


def _text_at(node: Node, step: int, whens: dict) -> str:
    if isinstance(node, str):
        return node
    if isinstance(node, _Seq):
        return "".join(_text_at(part, step, whens) for part in node.parts)
    if isinstance(node, _Scheduled):
        if step <= whens[id(node)]:
            return "" if node.before is None else _text_at(node.before, step, whens)
        return _text_at(node.after, step, whens)
    option = node.options[(step - 1) % len(node.options)]
    return _text_at(option, step, whens)


def prompt_schedule(
    prompt: str,
    steps: int,
    first_pass_steps: Optional[int] = None,
    old_timelines: bool = False,
) -> Schedule:
    """[(end_step, text), ...] for `steps` steps (A1111's schedule for one prompt).

    `first_pass_steps`: this is the hires-fix pass after a first pass of that
    many steps (A1111's base_steps with hires_steps = `steps`).

    >>> prompt_schedule("a [b:3]", 10)
    [(3, 'a '), (10, 'a b')]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number of at least 1, got {steps!r}")
    tree = parse(prompt)
    if tree is None:
        return [(steps, prompt)]
    if first_pass_steps is None or old_timelines:
        int_offset, float_offset = 0, 0.0
        if first_pass_steps is not None:  # old timelines: A1111 schedules over the first pass
            steps = int(first_pass_steps)
    else:
        int_offset, float_offset = int(first_pass_steps), 1.0
    ends = {steps}
    whens: dict = {}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            when = _resolve(node.when, steps, int_offset, float_offset, old_timelines)
            whens[id(node)] = when
            if when >= 1:
                ends.add(when)
        elif isinstance(node, _Alternate):
            ends.update(range(1, steps + 1))
    return [(end, _text_at(tree, end, whens)) for end in sorted(ends)]


def first_text(prompt: str, nominal_steps: int = 20) -> str:
    """The text a sampler starts with: every edit before its switch, every
    alternation on its first option (at `nominal_steps`, for edits due at step 0)."""
    tree = parse(prompt)
    if tree is None:
        return prompt
    whens = {
        id(node): _resolve(node.when, nominal_steps, 0, 0.0, False)
        for node in _walk(tree)
        if isinstance(node, _Scheduled)
    }
    return _text_at(tree, 1, whens)


def entry_at(schedule: Schedule, step_index: int) -> int:
    """Which entry a sampler uses at 0-based step `step_index` (A1111's rule:
    the first whose end_step >= step_index; the first entry past the end)."""
    for index, (end, _text) in enumerate(schedule):
        if step_index <= end:
            return index
    return 0


__all__ = ["entry_at", "first_text", "has_editing", "parse", "prompt_schedule"]
