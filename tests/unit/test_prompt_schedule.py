"""Prompt editing schedules against A1111's own documented examples.

The expected values are the ones A1111 documents for its
`get_learned_conditioning_prompt_schedules` (the doctests and the comment of
modules/prompt_parser.py) and the examples of its wiki; [(end_step, text)].
"""
from __future__ import annotations

import pytest

from diffusers_studio.nodes.engine.prompt_schedule import entry_at, first_text, has_editing, prompt_schedule

ALTERNATE_10 = [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]

A1111_DOCTESTS_10_STEPS = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", ALTERNATE_10),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
]


@pytest.mark.parametrize("prompt,expected", A1111_DOCTESTS_10_STEPS)
def test_a1111_doctests(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


def test_a1111_nested_example_at_100_steps():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


@pytest.mark.parametrize(
    "prompt,steps,expected",
    [
        ("a [fantasy:cyberpunk:16] landscape", 20, [(16, "a fantasy landscape"), (20, "a cyberpunk landscape")]),
        ("[to:1]", 20, [(1, ""), (20, "to")]),
        ("[from::2]", 20, [(2, "from"), (20, "")]),
        ("[from:to:0.3]", 20, [(6, "from"), (20, "to")]),
        ("[from:to:0.3]", 3, [(3, "to")]),  # int(0.9) = 0: "to" from the start, as A1111
        ("[alt|alt1]", 4, [(1, "alt"), (2, "alt1"), (3, "alt"), (4, "alt1")]),
        ("[a:b:-1]", 5, [(5, "b")]),
        ("[a:b:1e1]", 20, [(10, "a"), (20, "b")]),
        ("[a:b:1.0]", 20, [(20, "a")]),  # a decimal point makes it a fraction: the end
    ],
)
def test_wiki_examples(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_a1111_api_suite_prompt_keeps_emphasis_for_the_attention_parser():
    prompt = "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"
    assert prompt_schedule(prompt, 3) == [
        (1, "((emphasis)), (emphasis1:1.1), , from, to, alt"),
        (2, "((emphasis)), (emphasis1:1.1), to, from, to, alt1"),
        (3, "((emphasis)), (emphasis1:1.1), to, , to, alt"),
    ]


def test_hires_pass_counts_on_from_the_first_pass():
    """A1111's doctests with hires_steps: fractions below 1 are over, 1.5 is half the hires pass."""
    assert prompt_schedule("a [b:.5] c", 10, first_pass_steps=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, first_pass_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:15] c", 10, first_pass_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:8] c", 4, first_pass_steps=10) == [(4, "a b c")]


def test_old_timelines():
    # below 1 a fraction, otherwise a step; a hires pass is scheduled over the first pass
    assert prompt_schedule("[a:b:1.5]", 10, old_timelines=True) == [(1, "a"), (10, "b")]
    assert prompt_schedule("[a:b:1.5]", 10) == [(10, "a")]
    assert prompt_schedule("[a:b:0.5]", 4, first_pass_steps=10, old_timelines=True) == [(5, "a"), (10, "b")]


@pytest.mark.parametrize(
    "prompt",
    [
        "a | [b:3]",  # a "|" outside an alternation: A1111's parse error, used as written
        "[b:3] trailing\\",
        "[a:b:c:1]",
        "[a:(b:1]",
        "\\[b:3\\]",
    ],
)
def test_unparsable_or_escaped_prompts_are_used_as_written(prompt):
    assert prompt_schedule(prompt, 10) == [(10, prompt)]
    assert not has_editing(prompt)


def test_deep_nesting_does_not_blow_up():
    prompt = "[(" * 3000 + "x"
    assert prompt_schedule(prompt, 5) == [(5, prompt)]
    long = "a, " * 2000 + "[cat:dog:0.5]"
    assert prompt_schedule(long, 4) == [(2, "a, " * 2000 + "cat"), (4, "a, " * 2000 + "dog")]


def test_entry_at_uses_a1111s_inclusive_end():
    schedule = prompt_schedule("[cat:dog:0.5]", 20)
    assert schedule == [(10, "cat"), (20, "dog")]
    assert [entry_at(schedule, i) for i in (0, 10, 11, 19, 20)] == [0, 0, 1, 1, 1]
    assert entry_at(schedule, 21) == 0  # past the end: the first entry (A1111's default)


def test_has_editing_and_first_text():
    assert has_editing("a [b:c:0.5]") and has_editing("[x|y]") and has_editing("([b:2])")
    assert not has_editing("a (b:1.2) [c] BREAK d")
    assert first_text("a [b:c:0.5] [x|y] [z:3] [w::4]") == "a b x  w"


@pytest.mark.parametrize("steps", [0, -1, 2.5, True])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        prompt_schedule("a [b:3]", steps)
