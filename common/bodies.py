"""JSON nesting depth, measured before anything parses a body.

Python's `json` (which FastAPI and Starlette parse JSON bodies with) recurses once per level and
raises RecursionError — a 500 — about a thousand levels down; orjson stops at 1024 levels but
cannot serialize more than 255 back. So every body is held to `max_json_depth` before any parser
sees it, by `nesting_exceeds`: strings are cut out, every bracket but `[` `{` `]` `}` dropped,
and one possessive regular expression (linear, no backtracking, C speed) walks what is left.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

from common.errors import JsonTooDeepError

# A JSON string: its brackets are text (RFC 8259 §7; an escape is a backslash and one character).
# One left open runs to the end of the body, as far as a parser would read it.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


@functools.cache
def _at_most(depth: int) -> re.Pattern[bytes]:
    """Bracket groups at most `depth` deep; the last may be left open (a truncated document is
    the parser's to refuse). Possessive at every level, so a failing group is never re-scanned."""
    pattern = b""
    for _ in range(depth):
        pattern = rb"(?:\[" + pattern + rb"(?:\]|\Z))*+"
    return re.compile(pattern)


def nesting_exceeds(body: bytes, max_depth: int) -> bool:
    """True if arrays and objects in `body` nest deeper than `max_depth` before it stops being
    JSON (a parser reads no further than a stray closing bracket, so neither does this)."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    brackets = _STRING.sub(b"", body).translate(_SQUARE, _NOT_A_BRACKET)
    end = _at_most(max_depth).match(brackets)
    # The match stops at the group that opens level max_depth + 1, or at a stray `]`.
    stop = end.end() if end is not None else 0
    return stop < len(brackets) and brackets[stop] == ord("[")


def parse_json(body: bytes, *, max_depth: int) -> Any:
    """The parsed body: JsonTooDeepError if it nests deeper than `max_depth`, ValueError if it is
    not JSON (orjson: RFC 8259, UTF-8, no NaN)."""
    if nesting_exceeds(body, max_depth):
        raise JsonTooDeepError(f"the JSON body nests deeper than {max_depth} levels")
    return orjson.loads(body)
