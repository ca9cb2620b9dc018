"""Feedback (CDS Hooks 2.0 §Feedback): what the clinician did with this service's cards.

The service remembers, for a while, each card it issued (which service, its suggestion uuids,
its override reasons). Feedback about a remembered card must be consistent with it: from the
service that issued it, accepting only suggestions the card offered, overriding only with a
reason the card offered (or none). Feedback about a card it no longer remembers (a restart, or
older than `ttl`) is recorded as unmatched rather than refused: feedback is informational.
In memory, per process: an example, not a data warehouse.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from common.clock import Clock
from examples.cds_service.schemas import Card, FeedbackItem


@dataclass(frozen=True)
class IssuedCard:
    service_id: str
    suggestions: frozenset[str]
    override_reasons: frozenset[tuple[str, str]]  # (system, code)
    expires_at: float


class IssuedCards:
    def __init__(self, clock: Clock, ttl: float = 86_400.0, max_cards: int = 20_000) -> None:
        self._clock, self._ttl, self._max = clock, ttl, max_cards
        self._cards: OrderedDict[str, IssuedCard] = OrderedDict()

    def remember(self, service_id: str, cards: list[Card]) -> None:
        expires_at = self._clock() + self._ttl
        for card in cards:
            self._cards[card.uuid] = IssuedCard(
                service_id,
                frozenset(s.uuid for s in card.suggestions or []),
                frozenset((r.system, r.code) for r in card.overrideReasons or []),
                expires_at,
            )
            self._cards.move_to_end(card.uuid)
        while len(self._cards) > self._max:
            self._cards.popitem(last=False)

    def get(self, card_uuid: str) -> IssuedCard | None:
        card = self._cards.get(card_uuid)
        if card is None or card.expires_at <= self._clock():
            return None
        return card


def inconsistency(service_id: str, item: FeedbackItem, issued: IssuedCard | None) -> str | None:
    """Why this feedback cannot be about the card it names, or None when it can."""
    if issued is None:
        return None
    if issued.service_id != service_id:
        return f"card {item.card} was not issued by this service"
    unknown = [s.id for s in item.acceptedSuggestions or [] if s.id not in issued.suggestions]
    if unknown:
        return f"card {item.card} has no suggestion {unknown[0]}"
    reason = item.overrideReason.reason if item.overrideReason else None
    if reason is not None and (reason.system or "", reason.code) not in issued.override_reasons:
        return f"card {item.card} does not offer override reason {reason.code}"
    return None


class FeedbackLog:
    """The last `size` feedback entries, as recorded (no tokens, no free text beyond the comment)."""

    def __init__(self, size: int = 1000) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=size)

    def record(self, service_id: str, item: FeedbackItem, matched: bool) -> None:
        reason = item.overrideReason
        self.entries.append(
            {
                "service": service_id,
                "card": item.card,
                "outcome": item.outcome,
                "acceptedSuggestions": [s.id for s in item.acceptedSuggestions or []],
                "overrideReason": reason.reason.code if reason and reason.reason else None,
                "userComment": reason.userComment if reason else None,
                "outcomeTimestamp": item.outcomeTimestamp.isoformat(),
                "matched": matched,
            }
        )
