"""A cache of a remote JWK Set (the authserver's for the FHIR server, the EHR's for a CDS Service).

Fetched once, kept for `ttl` seconds, refetched early when a token names an unknown kid — but at
most once per `min_refetch` seconds (default 1 s; a signing service publishes a new key
`key_publish_ahead_seconds` before it signs with it) and by one coroutine at a time, so a flood of tokens with
made-up kids cannot turn into a flood of fetches (no fetch storm).
"""

from __future__ import annotations

import asyncio

import httpx
from joserfc.jwk import KeySet

from common.clock import Clock, system_clock
from common.errors import TokenInvalidError
from common.jose import import_public_jwks


class JwksCache:
    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        ttl: float = 300.0,
        min_refetch: float = 1.0,
        clock: Clock = system_clock,
    ) -> None:
        self._client = client
        self.url = url
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self.fetches = 0

    async def _fetch(self) -> None:
        self.fetches += 1
        self._fetched_at = self._clock()  # even on failure: failures are rate-limited too
        response = await self._client.get(self.url, headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise TokenInvalidError(f"JWKS fetch answered {response.status_code}")
        keys = import_public_jwks(response.json())
        self._keys = keys
        self._kids = frozenset(k.kid for k in keys.keys if k.kid)

    async def key_set(self, kid: str | None = None) -> KeySet:
        """The current key set; refetched when stale, or when `kid` is unknown and allowed."""
        now = self._clock()
        stale = self._keys is None or now - self._fetched_at >= self._ttl
        unknown = kid is not None and kid not in self._kids
        if stale or (unknown and now - self._fetched_at >= self._min_refetch):
            async with self._lock:
                now = self._clock()
                stale = self._keys is None or now - self._fetched_at >= self._ttl
                unknown = kid is not None and kid not in self._kids
                if stale or (unknown and now - self._fetched_at >= self._min_refetch):
                    try:
                        await self._fetch()
                    except (httpx.HTTPError, ValueError, TokenInvalidError) as exc:
                        if self._keys is None:
                            raise TokenInvalidError(f"JWKS unavailable: {type(exc).__name__}") from None
        if self._keys is None:
            raise TokenInvalidError("JWKS unavailable")
        return self._keys
