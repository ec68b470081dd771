"""AUTOMATIC1111's attention (emphasis) syntax, parsed into weighted text runs.

People paste prompts written for the A1111 web UI, and the pack's `/sdapi/v1`
routes receive them verbatim, so the same prompt has to weigh the same words by
the same amounts here. The behaviour below is A1111's, written from its
documented semantics:

- `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1;
  nesting multiplies (`((text))` is 1.21).
- `(text:1.3)` sets an explicit multiplier (spaces allowed around the number,
  a sign too: `( text : -0.5 )`).
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters; a backslash
  before anything else is dropped (A1111 does the same).
- Unbalanced brackets are tolerated: a `)` or `]` with nothing open is literal
  text, and a bracket still open at the end applies to the rest of the prompt.
  A `:number)` with no `(` open is literal text.
- `BREAK` (uppercase, as a whole word) ends the current 75-token chunk.
- Adjacent runs with the same weight are merged, so `(a)(b)` is one run `ab`.

Two deliberate differences from A1111, both where A1111 misbehaves:

- A `BREAK` inside brackets still breaks. (A1111 multiplies the marker's
  weight with the bracket's, and then encodes the word "BREAK" as text.)
- A weight that is not a number, such as `(cat:1.2.3)`, raises a ValueError
  naming the prompt instead of a bare float() error.

`parse_prompt_attention` returns A1111's flat shape, with the marker
`("BREAK", -1.0)` between chunks; `parse_prompt_chunks` returns the runs already
split at BREAKs, which is what the text encoder needs, without any way to
confuse a marker with text.
"""
from __future__ import annotations

import re
from typing import List, Tuple

Run = Tuple[str, float]

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_TEXT = "BREAK"
BREAK_WEIGHT = -1.0
BREAK_RUN: Run = (BREAK_TEXT, BREAK_WEIGHT)

_ESCAPABLE = "()[]\\"
_SPECIAL = "\\()[]:"
# ":" + optional spaces + a number-looking word + optional spaces + ")".
_WEIGHT = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


class _Piece:
    """One run while parsing: text, weight, and whether it is a BREAK marker.

    Markers keep their own flag so that brackets never reweigh them and merging
    never glues them to text.
    """

    __slots__ = ("text", "weight", "is_break")

    def __init__(self, text: str, weight: float = 1.0, is_break: bool = False):
        self.text = text
        self.weight = weight
        self.is_break = is_break


def _append_text(pieces: List[_Piece], text: str) -> None:
    """Add plain text, splitting it at BREAK words into text/marker/text."""
    parts = _BREAK.split(text)
    for index, part in enumerate(parts):
        if index:
            pieces.append(_Piece(BREAK_TEXT, BREAK_WEIGHT, is_break=True))
        pieces.append(_Piece(part))


def _reweigh(pieces: List[_Piece], start: int, multiplier: float) -> None:
    """Multiply every text run from `start` to the end (the bracket's span)."""
    for piece in pieces[start:]:
        if not piece.is_break:
            piece.weight *= multiplier


def _scan(text: str) -> List[_Piece]:
    """Walk the prompt once, keeping a stack of open brackets of each kind."""
    pieces: List[_Piece] = []
    open_round: List[int] = []
    open_square: List[int] = []
    position = 0
    length = len(text)
    while position < length:
        char = text[position]
        if char == "\\":
            following = text[position + 1] if position + 1 < length else ""
            if following and following in _ESCAPABLE:
                pieces.append(_Piece(following))
                position += 2
            else:
                pieces.append(_Piece(""))  # a stray backslash is dropped
                position += 1
        elif char == "(":
            open_round.append(len(pieces))
            position += 1
        elif char == "[":
            open_square.append(len(pieces))
            position += 1
        elif char == ":":
            match = _WEIGHT.match(text, position)
            if match is None:
                _append_text(pieces, ":")
                position += 1
            elif open_round:
                _reweigh(pieces, open_round.pop(), _parse_weight(match.group(1), text))
                position = match.end()
            else:
                _append_text(pieces, match.group(0))
                position = match.end()
        elif char == ")":
            if open_round:
                _reweigh(pieces, open_round.pop(), ROUND_MULTIPLIER)
            else:
                _append_text(pieces, ")")
            position += 1
        elif char == "]":
            if open_square:
                _reweigh(pieces, open_square.pop(), SQUARE_MULTIPLIER)
            else:
                _append_text(pieces, "]")
            position += 1
        else:
            end = position
            while end < length and text[end] not in _SPECIAL:
                end += 1
            _append_text(pieces, text[position:end])
            position = end
    # Brackets left open weigh everything after them (rounds first, as A1111,
    # so that the float products match it bit for bit).
    for start in open_round:
        _reweigh(pieces, start, ROUND_MULTIPLIER)
    for start in open_square:
        _reweigh(pieces, start, SQUARE_MULTIPLIER)
    return pieces


def _parse_weight(number: str, prompt: str) -> float:
    try:
        return float(number)
    except ValueError:
        raise ValueError(
            f"prompt: the emphasis weight {number!r} in {prompt!r} is not a number; "
            "write it like (word:1.2), or escape literal brackets as \\( and \\)."
        ) from None


def _merge(pieces: List[_Piece]) -> List[_Piece]:
    """Join neighbouring text runs of equal weight (markers stay apart)."""
    merged: List[_Piece] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if (
            last is not None
            and not last.is_break
            and not piece.is_break
            and last.weight == piece.weight
        ):
            last.text += piece.text
        else:
            merged.append(_Piece(piece.text, piece.weight, piece.is_break))
    return merged


def _parse(text: str) -> List[_Piece]:
    if not isinstance(text, str):
        raise ValueError(f"prompt: expected text, got {type(text).__name__}")
    pieces = _merge(_scan(text))
    return pieces or [_Piece("")]


def parse_prompt_attention(text: str) -> List[Run]:
    """A1111's runs: [(text, weight)], with ("BREAK", -1.0) between chunks.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    return [BREAK_RUN if p.is_break else (p.text, p.weight) for p in _parse(text)]


def parse_prompt_chunks(text: str) -> List[List[Run]]:
    """The runs grouped by BREAK: one list per forced chunk, never empty.

    `"a BREAK b"` gives `[[("a", 1.0)], [("b", 1.0)]]`; empty runs are kept
    so that `"BREAK b"` still starts with an (empty) chunk, as in A1111.
    """
    chunks: List[List[Run]] = [[]]
    for piece in _parse(text):
        if piece.is_break:
            chunks.append([])
        else:
            chunks[-1].append((piece.text, piece.weight))
    return chunks


__all__ = [
    "BREAK_RUN",
    "BREAK_TEXT",
    "BREAK_WEIGHT",
    "ROUND_MULTIPLIER",
    "SQUARE_MULTIPLIER",
    "Run",
    "parse_prompt_attention",
    "parse_prompt_chunks",
]
