"""How this CDS Service trusts its CDS Clients (CDS Hooks 2.0 §Security, "Trusting CDS Clients").

Every request — discovery, service call, feedback — carries `Authorization: Bearer <JWT>` signed
by a CDS Client. The service:

- selects the client by the token's `iss` among the configured ones (an unknown `iss` is refused
  before anything is fetched) and takes keys only from that client's configured JWKS URL;
- pins the algorithms (ES384, RS384; never `none` or HMAC) and requires `typ` JWT and a `kid`;
- refuses `jwk`, `x5u` and `x5c` headers and accepts a `jku` only if it equals the configured
  JWKS URL: a `jku` is never fetched (RFC 8725 §3.10);
- requires `aud` to be, or to contain, the exact URL called (RFC 7519 §4.1.3);
- requires `exp` (not past, at most 300 s ahead), `iat` (not in the future) and `jti`, which must
  not have been seen before from that issuer while the token lives (memory, or Redis).

Any failure: a bare 401 — no body, no reason, no card. The reason is logged, never the token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from fastapi import Request

from common.clock import Clock
from common.errors import TokenInvalidError
from common.jose import unverified_claims
from common.jwks import JwksCache
from common.jwt_verify import JwtRules, Replay, verify
from common.replay import ReplayStore
from examples.cds_service.settings import CdsSettings, TrustedClient

log = logging.getLogger(__name__)
ALGORITHMS = ("ES384", "RS384")
MAX_LIFETIME = 300


class Unauthorized(Exception):
    """Answered as a bare 401."""


@dataclass(frozen=True)
class Verified:
    client: TrustedClient
    claims: dict[str, object]


class TrustedClients:
    """The configured CDS Clients, each with its own JWKS cache (nothing is fetched until needed)."""

    def __init__(self, clients: list[TrustedClient], http: httpx.AsyncClient, clock: Clock) -> None:
        self._by_issuer = {c.issuer: (c, JwksCache(http, c.jwks_url, clock=clock)) for c in clients}

    def get(self, issuer: object) -> tuple[TrustedClient, JwksCache] | None:
        return self._by_issuer.get(issuer) if isinstance(issuer, str) else None

    def jwks(self, issuer: str) -> JwksCache:
        return self._by_issuer[issuer][1]


def request_url(settings: CdsSettings, request: Request) -> str:
    """The exact URL that was called, as the CDS Client addressed it (public base + path)."""
    return settings.base_url + request.url.path


async def authenticate(
    request: Request, settings: CdsSettings, trusted: TrustedClients, replay: ReplayStore, clock: Clock
) -> Verified:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized
    try:
        found = trusted.get(unverified_claims(token).get("iss"))
        if found is None:
            raise TokenInvalidError("iss not trusted")
        client, jwks = found
        rules = JwtRules(
            algorithms=ALGORITHMS,
            typ="JWT",
            issuer=client.issuer,
            audience=request_url(settings, request),
            clock=clock,
            leeway=settings.jwt_leeway_seconds,
            max_lifetime=MAX_LIFETIME,
            allowed_jku=(client.jwks_url,),
        )
        # The header is checked before any JWKS fetch; the jti is remembered as long as the
        # token would still verify (exp + leeway).
        verified = await verify(token, jwks.key_set, rules, Replay(replay.first_use, client.issuer))
    except TokenInvalidError as exc:
        log.info("rejected CDS Client JWT: %s", exc.reason)
        raise Unauthorized from None
    return Verified(client, verified.claims)
