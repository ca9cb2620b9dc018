"""Feedback (CDS Hooks 2.0 §Feedback): what the clinician did with this service's cards.

The service remembers, for a while, each card it issued (which service, its suggestion uuids,
its override reasons). Feedback about a remembered card must be consistent with it: from the
service that issued it, accepting only suggestions the card offered, overriding only with a
reason the card offered (or none). Feedback about a card it no longer remembers (a restart, or
older than `ttl`) is recorded as unmatched rather than refused: feedback is informational.

Where the cards are remembered: with `MOCKEHR_CDS_REDIS_URL`, in Redis (`RedisIssuedCards`),
shared by every replica, so feedback reaching another replica than the one that issued the card
is still checked against it; without, in process memory (`IssuedCards`). The log of recorded
feedback (`FeedbackLog`) is per process either way: an example, not a data warehouse.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

from common.clock import Clock
from examples.cds_service.schemas import Card, FeedbackItem

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True)
class IssuedCard:
    service_id: str
    suggestions: frozenset[str]
    override_reasons: frozenset[tuple[str, str]]  # (system, code)
    expires_at: float


log = logging.getLogger(__name__)


class IssuedCardStore(Protocol):
    async def remember(self, service_id: str, cards: list[Card]) -> None: ...

    async def get(self, card_uuid: str) -> IssuedCard | None: ...


def _issued(service_id: str, card: Card, expires_at: float) -> IssuedCard:
    return IssuedCard(
        service_id,
        frozenset(s.uuid for s in card.suggestions or []),
        frozenset((r.system, r.code) for r in card.overrideReasons or []),
        expires_at,
    )


class IssuedCards:
    """In process memory: one replica's cards only."""

    def __init__(self, clock: Clock, ttl: float = 86_400.0, max_cards: int = 20_000) -> None:
        self._clock, self._ttl, self._max = clock, ttl, max_cards
        self._cards: OrderedDict[str, IssuedCard] = OrderedDict()

    async def remember(self, service_id: str, cards: list[Card]) -> None:
        expires_at = self._clock() + self._ttl
        for card in cards:
            self._cards[card.uuid] = _issued(service_id, card, expires_at)
            self._cards.move_to_end(card.uuid)
        while len(self._cards) > self._max:
            self._cards.popitem(last=False)

    async def get(self, card_uuid: str) -> IssuedCard | None:
        card = self._cards.get(card_uuid)
        if card is None or card.expires_at <= self._clock():
            return None
        return card


class RedisIssuedCards:
    """In Redis, shared by every replica; each card a key that expires with its `ttl`. Redis
    unavailable: the card is not remembered and feedback about it is unmatched (informational)."""

    def __init__(self, redis: Redis, prefix: str, ttl: int = 86_400) -> None:
        self._redis, self._prefix, self._ttl = redis, prefix, ttl

    async def remember(self, service_id: str, cards: list[Card]) -> None:
        if not cards:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for card in cards:
                    issued = _issued(service_id, card, 0)
                    value = {
                        "service": service_id,
                        "suggestions": sorted(issued.suggestions),
                        "reasons": sorted(issued.override_reasons),
                    }
                    pipe.set(f"{self._prefix}:{card.uuid}", json.dumps(value), ex=self._ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("issued cards not remembered (Redis): %s", type(exc).__name__)

    async def get(self, card_uuid: str) -> IssuedCard | None:
        try:
            raw = await self._redis.get(f"{self._prefix}:{card_uuid}")
        except (RedisError, OSError) as exc:
            log.warning("issued card not looked up (Redis): %s", type(exc).__name__)
            return None
        if raw is None:
            return None
        value = json.loads(raw)
        reasons = frozenset((str(system), str(code)) for system, code in value["reasons"])
        return IssuedCard(str(value["service"]), frozenset(value["suggestions"]), reasons, float("inf"))


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
