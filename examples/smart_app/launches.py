"""Launches on their way through the authorization server, kept server-side until /callback (once).

The browser holds only an opaque random key (in an HttpOnly cookie); fhirclient's state (the
OAuth `state`, the PKCE verifier, the endpoints) and the OpenID Connect nonce stay here, in
memory, for `ttl` seconds at most. The store is bounded: past `max_size` the oldest launch goes.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from common.clock import Clock, system_clock


@dataclass(frozen=True)
class Pending:
    client_state: dict[str, Any]  # FHIRClient.state: rebuilds the same client at /callback
    state: str  # the OAuth state fhirclient sent (RFC 6749 §10.12)
    issuer: str  # the authorization server it was sent to (RFC 9207; id_token `iss`)
    jwks_uri: str
    nonce: str  # OpenID Connect Core §3.1.2.1, checked in the id_token
    created: float


class PendingLaunches:
    def __init__(self, *, ttl: float, max_size: int = 1000, clock: Clock = system_clock) -> None:
        self._ttl = ttl
        self._max_size = max_size
        self._clock = clock
        self._pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def _forget_stale(self) -> None:
        now = self._clock()
        for key in [k for k, p in self._pending.items() if now - p.created > self._ttl]:
            del self._pending[key]
        while len(self._pending) >= self._max_size:  # insertion order: the oldest first
            del self._pending[next(iter(self._pending))]

    def add(self, pending: Pending) -> str:
        """Keep `pending`; the returned key goes to the browser, nothing else does."""
        self._forget_stale()
        key = secrets.token_urlsafe(32)
        self._pending[key] = pending
        return key

    def take(self, key: str) -> Pending | None:
        """The launch for `key`, removed (a key is good for one answer), or None when unknown or expired."""
        if not key:
            return None
        pending = self._pending.pop(key, None)
        if pending is None or self._clock() - pending.created > self._ttl:
            return None
        return pending
