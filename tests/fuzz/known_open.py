"""Defect classes of issue 15 that other branches are fixing while this harness lands.

THE ONE LIST TO DELETE FROM. While a class is listed here the fuzz strategies do not generate
its inputs (see `is_open`) and its minimal failing example (tests/fuzz/test_known_open.py) is an
`xfail(strict=False)`. When the branch fixing a class is merged, delete its entry: the strategies
then generate those inputs again and the example becomes an ordinary regression test.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class KnownOpen:
    reason: str
    example: str  # the minimal failing request, as found by the fuzzer


KNOWN_OPEN: dict[str, KnownOpen] = {
    "numbers-out-of-range": KnownOpen(
        "numbers out of range → OverflowError/500 (being fixed on another branch)",
        "GET /revocations?after=99999999999999999999 (authserver); "
        "GET /fhir/Patient/<id>/_history/99999999999999999999",
    ),
    "deep-json": KnownOpen(
        "too deeply nested JSON → RecursionError (being fixed on another branch)",
        'POST /launch {"patient": [[[…100000 deep…]]]} (authserver: json.loads raises RecursionError)',
    ),
    "trailing-slash-redirect": KnownOpen(
        "trailing-slash 307 redirects built from the Host header (being fixed on another branch)",
        "GET /fhir/Patient/ with Host: evil.example → 307 Location: https://evil.example/fhir/Patient",
    ),
}


def is_open(name: str) -> bool:
    """True while the class `name` is still listed (its inputs are then kept out of the fuzz)."""
    return name in KNOWN_OPEN


def known_open(name: str) -> pytest.MarkDecorator:
    """xfail for the example of a listed class; a no-op mark once the class is deleted above."""
    if name in KNOWN_OPEN:
        entry = KNOWN_OPEN[name]
        return pytest.mark.xfail(strict=False, reason=f"issue 15, {entry.reason}")
    return pytest.mark.usefixtures()
