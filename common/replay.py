"""jti replay detection (RFC 7523 §3 item 7, CDS Hooks 2.0 JWT `jti`).

`first_use(key, expires_at)` answers True exactly once per key until `expires_at`; the key is
remembered until then (the token is dead afterwards, so it may be forgotten). With Redis the
memory is shared by every replica (SET NX with an expiry); the in-process store is for a single
process only.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import TYPE_CHECKING, Protocol

from common.clock import Clock, system_clock

if TYPE_CHECKING:
    from redis.asyncio import Redis


class ReplayStore(Protocol):
    async def first_use(self, key: str, expires_at: int) -> bool: ...


class MemoryReplayStore:
    def __init__(self, clock: Clock = system_clock, max_entries: int = 1_000_000) -> None:
        self._clock = clock
        self._seen: dict[str, int] = {}
        self._expiry: list[tuple[int, str]] = []
        self._max = max_entries
        self._lock = asyncio.Lock()

    async def first_use(self, key: str, expires_at: int) -> bool:
        async with self._lock:
            now = int(self._clock())
            while self._expiry and self._expiry[0][0] <= now:
                _, old = heapq.heappop(self._expiry)
                if self._seen.get(old, now + 1) <= now:
                    del self._seen[old]
            if key in self._seen:
                return False
            if len(self._seen) >= self._max:
                return False  # fail closed rather than forget a live jti
            self._seen[key] = expires_at
            heapq.heappush(self._expiry, (expires_at, key))
            return True


class RedisReplayStore:
    def __init__(self, redis: Redis, prefix: str, clock: Clock = system_clock) -> None:
        self._redis = redis
        self._prefix = prefix
        self._clock = clock

    async def first_use(self, key: str, expires_at: int) -> bool:
        ttl = max(1, expires_at - int(self._clock()))
        created = await self._redis.set(f"{self._prefix}:{key}", b"1", nx=True, ex=ttl)
        return bool(created)
