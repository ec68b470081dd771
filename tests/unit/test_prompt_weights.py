"""A1111 attention syntax: a table of prompts and the runs A1111 gives for them."""
from __future__ import annotations

import pytest

from diffusers_studio.nodes.engine.prompt_weights import (
    BREAK_RUN,
    parse_prompt_attention,
    parse_prompt_chunks,
)

UP = 1.1
DOWN = 1 / 1.1

CASES = [
    # (prompt, expected runs) — the first six are A1111's own documented examples.
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", UP), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", UP)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", UP)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.3 * UP * UP),
            (" ", UP),
            ("on", 1.0),
            (" a ", UP),
            ("hill", 0.55),
            (", sun, ", UP),
            ("sky", UP**4),
            (".", UP),
        ],
    ),
    ("", [("", 1.0)]),
    ("[word]", [("word", DOWN)]),
    ("((word))", [("word", UP * UP)]),
    ("[[word]]", [("word", DOWN * DOWN)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("( word : 1.3 )", [(" word ", 1.3)]),
    ("(word:-0.5)", [("word", -0.5)]),
    ("(word:.5)", [("word", 0.5)]),
    ("((word:1.5))", [("word", 1.5 * UP)]),
    ("[(word:1.5)]", [("word", 1.5 * DOWN)]),
    ("(a [b] c)", [("a ", UP), ("b", UP * DOWN), (" c", UP)]),
    # Escapes are literal text and keep the surrounding weight.
    ("\\(word\\)", [("(word)", 1.0)]),
    ("\\[word\\]", [("[word]", 1.0)]),
    ("(a \\(b\\))", [("a (b)", UP)]),
    ("a\\\\b", [("a\\b", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a stray backslash is dropped, as in A1111
    # Unbalanced brackets.
    ("word)", [("word)", 1.0)]),
    ("word]", [("word]", 1.0)]),
    ("[unclosed", [("unclosed", DOWN)]),
    ("a (b [c", [("a ", 1.0), ("b ", UP), ("c", UP * DOWN)]),
    ("word:1.3)", [("word:1.3)", 1.0)]),  # a weight with no "(" open is text
    # Colons that are not weights are text.
    ("a:b", [("a:b", 1.0)]),
    ("(a:b)", [("a:b", UP)]),
    ("(word:1e3)", [("word:1e3", UP)]),
    # BREAK, uppercase and as a whole word only.
    ("a BREAK b", [("a", 1.0), BREAK_RUN, ("b", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("BREAK", [("", 1.0), BREAK_RUN, ("", 1.0)]),
    ("(a BREAK b)", [("a", UP), BREAK_RUN, ("b", UP)]),  # A1111 would encode "BREAK" here
]


@pytest.mark.parametrize("prompt, expected", CASES, ids=[repr(case[0]) for case in CASES])
def test_parse_prompt_attention(prompt, expected):
    runs = parse_prompt_attention(prompt)
    assert [text for text, _ in runs] == [text for text, _ in expected]
    assert [weight for _, weight in runs] == pytest.approx([weight for _, weight in expected], rel=1e-12)


def test_runs_are_plain_tuples():
    assert parse_prompt_attention("a (b:1.2)") == [("a ", 1.0), ("b", 1.2)]


def test_nesting_multiplies_exactly_as_a1111():
    # A1111 multiplies the open bracket spans in place, so the product order is
    # fixed; the weights must be bit-identical for runs to merge the same way.
    runs = dict(parse_prompt_attention("(((house:1.3)) x"))
    assert runs["house"] == 1.3 * 1.1 * 1.1


def test_unparseable_weight_names_the_prompt():
    with pytest.raises(ValueError, match=r"prompt: .*1\.2\.3"):
        parse_prompt_attention("(cat:1.2.3)")


def test_non_string_prompt():
    with pytest.raises(ValueError, match="prompt"):
        parse_prompt_attention(None)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a cat", [[("a cat", 1.0)]]),
        ("a BREAK (b)", [[("a", 1.0)], [("", 1.0), ("b", UP)]]),
        ("BREAK b", [[("", 1.0)], [("b", 1.0)]]),
        ("a BREAK BREAK b", [[("a", 1.0)], [("", 1.0)], [("b", 1.0)]]),
        ("", [[("", 1.0)]]),
    ],
)
def test_parse_prompt_chunks(prompt, expected):
    assert parse_prompt_chunks(prompt) == expected
