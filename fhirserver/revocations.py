"""Honouring token revocation within a second, on every replica.

Each FHIR server process polls the authorization server's revocation feed (`GET /revocations`)
every `poll_seconds` (MOCKEHR_FHIR_REVOCATION_POLL_SECONDS; the default is in fhirserver/settings.py)
and keeps the jti of every revoked, unexpired token in memory, so checking a token costs a set
lookup, not a network or database round trip. Sequence numbers can commit out of order, so each
poll asks again from `overlap` entries before the last one seen and de-duplicates by jti.

Fail closed: if the view is older than `max_staleness` (the authorization server unreachable),
the guard answers 503 rather than serve a token that may have been revoked.
"""

from __future__ import annotations

import logging

import httpx

from common.clock import Clock
from common.periodic import Periodic

log = logging.getLogger(__name__)


class RevocationWatcher:
    def __init__(
        self,
        client: httpx.AsyncClient,
        feed_url: str,
        *,
        clock: Clock,
        poll_seconds: float = 0.25,
        max_staleness: float = 1.0,
        overlap: int = 500,
    ) -> None:
        self._client = client
        self._url = feed_url
        self._clock = clock
        self.max_staleness = max_staleness
        self._overlap = overlap
        self._revoked: dict[str, int] = {}
        self._last = 0
        self._synced_at = float("-inf")
        self._loop = Periodic("revocation-watcher", self._poll_quietly, poll_seconds, run_first=True)

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def fresh(self) -> bool:
        return self._clock() - self._synced_at <= self.max_staleness

    async def poll_once(self) -> None:
        """Read the feed from a little before the last sequence seen, page by page."""
        after = max(0, self._last - self._overlap)
        while True:
            response = await self._client.get(self._url, params={"after": after, "limit": 1000})
            response.raise_for_status()
            body = response.json()
            for item in body["revocations"]:
                self._revoked[str(item["jti"])] = int(item["exp"])
            after = int(body["last"])
            self._last = max(self._last, after)
            if len(body["revocations"]) < 1000:
                break
        now = int(self._clock())
        if len(self._revoked) > 1000:
            self._revoked = {j: e for j, e in self._revoked.items() if e > now}
        self._synced_at = self._clock()

    async def _poll_quietly(self) -> None:
        try:
            await self.poll_once()
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            # Expected while the authorization server is away: the staleness limit fails closed.
            log.warning("revocation feed unavailable: %s", type(exc).__name__)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()
