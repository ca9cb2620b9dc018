"""How this CDS Service trusts its CDS Client (CDS Hooks 2.0 "Trusting CDS Clients").

Every request — discovery, service call, feedback — carries `Authorization: Bearer <JWT>` signed
by the EHR. The service: allow-lists `iss`; pins the algorithms (ES384, RS384); takes keys only
from the JWKS URL it was configured with (a `jku` is accepted only if it equals that URL and is
never fetched otherwise); requires `typ` JWT, `kid`; `aud` must contain the exact URL called;
`exp` not past and at most 5 minutes ahead; `iat` not in the future; `jti` never seen before
within the token's lifetime. Any failure: a bare 401, no reason, no card.
"""

from __future__ import annotations

import logging

from fastapi import Request

from common.errors import TokenInvalidError
from common.jose import unverified_header, verify_jwt
from common.jwks import JwksCache
from common.replay import ReplayStore
from examples.cds_service.settings import CdsSettings

log = logging.getLogger(__name__)
ALGORITHMS = ("ES384", "RS384")
MAX_LIFETIME = 300


class Unauthorized(Exception):
    """Answered as a bare 401."""


def request_url(settings: CdsSettings, request: Request) -> str:
    """The exact URL that was called, as the EHR addressed it (public base + path)."""
    return settings.base_url + request.url.path


async def authenticate(
    request: Request, settings: CdsSettings, jwks: JwksCache, replay: ReplayStore
) -> dict[str, object]:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized
    token = token.strip()
    try:
        kid = unverified_header(token).get("kid")
        keys = await jwks.key_set(kid if isinstance(kid, str) else None)
        verified = verify_jwt(
            token,
            keys,
            algorithms=ALGORITHMS,
            typ="JWT",
            issuer=settings.ehr_issuer,
            audience=request_url(settings, request),
            clock=request.app.state.clock,
            leeway=settings.jwt_leeway_seconds,
            max_lifetime=MAX_LIFETIME,
            require=("exp", "iat", "jti"),
            allowed_jku=(settings.ehr_jwks_url,),
        )
    except TokenInvalidError as exc:
        log.info("rejected CDS Client JWT: %s", exc.reason)
        raise Unauthorized from None
    claims = verified.claims
    # Remember the jti as long as verify_jwt would still accept the token (exp + leeway).
    remember_until = int(claims["exp"]) + settings.jwt_leeway_seconds
    if not await replay.first_use(f"{claims['iss']}|{claims['jti']}", remember_until):
        log.info("rejected CDS Client JWT: jti replayed")
        raise Unauthorized
    return claims
