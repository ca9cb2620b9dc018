"""The timing waterfall of one service's part of an exchange (issue 13 §8): where the hook's time
went, phase by phase, beside the numbers.

The engine (ehr/invoke.py) runs a service's phases strictly one after another — token exchange,
prefetch, service call, revocation — and records each one's duration, not its start. So the bars
are laid out sequentially: each starts where the previous phase that ran ended. Whatever the
total holds beyond the phases (building and validating the request, checking the cards) is the
`other` bar at the end. Bars are drawn as SVG rectangles whose position and width are
attributes in a 0–1000 coordinate space, never inline styles: the UI's CSP allows styles only
from the EHR's stylesheet (ehr/ui/web.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# In the order the engine runs them, as recorded in the exchange log's `timings` (ehr/exchange.py).
PHASES = (("token", "token_ms"), ("prefetch", "prefetch_ms"), ("call", "call_ms"), ("revoke", "revoke_ms"))
SCALE = 1000  # the SVG's width in user units


@dataclass(frozen=True)
class Bar:
    phase: str
    start_ms: float
    ms: float
    x: float  # start, in SVG units of SCALE
    width: float  # duration, in SVG units of SCALE


def _ms(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def waterfall(timings: Any) -> list[Bar]:
    """One bar per phase that ran (and `other` for the rest of the total), scaled to the total."""
    if not isinstance(timings, dict):
        return []
    spans: list[tuple[str, float, float]] = []
    offset = 0.0
    for phase, key in PHASES:
        ms = _ms(timings.get(key))
        if ms is None:
            continue  # the phase did not run
        spans.append((phase, offset, ms))
        offset += ms
    total = _ms(timings.get("total_ms"))
    if total is not None and total > offset:
        spans.append(("other", offset, total - offset))
        offset = total
    if offset <= 0:
        return [Bar(phase, start, ms, 0.0, 0.0) for phase, start, ms in spans]
    return [
        Bar(phase, start, ms, round(start * SCALE / offset, 1), round(ms * SCALE / offset, 1))
        for phase, start, ms in spans
    ]
