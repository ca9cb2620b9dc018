"""JSON nesting depth, measured before any parser recurses (common/bodies.py)."""

from __future__ import annotations

import json
import random

import pytest

from common.bodies import nesting_exceeds, parse_json
from common.errors import JsonTooDeepError


def _depth_reached(text: str) -> int:
    """The reference: how deep a left-to-right parser goes before the document ends or breaks."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
            if depth < 0:
                break  # a stray closing bracket: the parser stops here
    return deepest


@pytest.mark.parametrize("depth", [1, 7, 63, 64])
def test_a_document_nested_up_to_the_limit_passes(depth: int) -> None:
    document = json.dumps(json.loads("[" * depth + "]" * depth)).encode()
    assert not nesting_exceeds(document, 64)
    assert parse_json(document, max_depth=64) is not None


@pytest.mark.parametrize(
    "document",
    [
        b"[" * 65 + b"]" * 65,
        b'{"a":' * 65 + b"1" + b"}" * 65,
        b"[" * 1100,  # the 1,100-deep body of the issue, never closed
        b'[1, {"x": [' + b"[" * 70 + b"]" * 70 + b"]}]",
        b"[[]" * 40 + b"[" * 30,  # depth climbs one level per repetition
        b'["]]]]]]]]]]]]", ' + b"[" * 65 + b"]" * 65 + b"]",  # brackets in a string do not hide nesting
    ],
    ids=["arrays", "objects", "unclosed-1100", "deep-inside-shallow", "staircase", "closers-in-a-string"],
)
def test_a_document_nested_past_the_limit_is_refused_before_parsing(document: bytes) -> None:
    assert nesting_exceeds(document, 64)
    with pytest.raises(JsonTooDeepError) as refused:
        parse_json(document, max_depth=64)
    assert refused.value.status == 400
    assert str(refused.value) == "the JSON body nests deeper than 64 levels"


@pytest.mark.parametrize(
    "document",
    [
        b'{"note": "' + b"[" * 500 + b'"}',
        b'{"note": "\\"' + b"[" * 500 + b'"}',  # an escaped quote does not end the string
        b'["a\\\\", ' + b"[" * 60 + b"]" * 60 + b"]",  # an escaped backslash does
    ],
    ids=["brackets-in-a-string", "escaped-quote", "escaped-backslash"],
)
def test_brackets_inside_strings_are_text(document: bytes) -> None:
    assert not nesting_exceeds(document, 64)
    parse_json(document, max_depth=64)


def test_a_stray_closing_bracket_ends_what_a_parser_reads() -> None:
    # A parser refuses the stray `]` before it reaches the nesting that follows.
    assert not nesting_exceeds(b"[]]" + b"[" * 100, 64)


def test_the_measure_agrees_with_a_left_to_right_parser_on_random_documents() -> None:
    rng = random.Random(7)  # noqa: S311 - test data
    alphabet = '[[{]}"\\,1 a'
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        for limit in (1, 3, 8):
            assert nesting_exceeds(text.encode(), limit) == (_depth_reached(text) > limit), (text, limit)


def test_what_is_not_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_json(b'{"a": ', max_depth=64)
    with pytest.raises(ValueError):
        parse_json(b"\xff", max_depth=64)
