"""The OAuth endpoints: /token, /introspect, /revoke, and the revocation feed.

/token looks the grant_type up in the table of grants (grants.py: client_credentials, RFC 8693
token exchange, and for SMART apps authorization_code and refresh_token) and renders the one
token response (token_response.py).

Responses that carry tokens send `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749
§5.1); errors are RFC 6749 §5.2 JSON through the one OAuthError handler (error_responses.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from authserver import refresh, tokens
from authserver.clients import Client
from authserver.deps import RuntimeDep, StateDep
from authserver.errors import NO_STORE, InvalidRequestError, UnauthorizedClientError, UnsupportedGrantTypeError
from authserver.forms import one
from authserver.grants import GRANTS, TokenRequest
from authserver.token_response import render
from common.errors import TokenInvalidError
from common.numbers import INT32_MAX, bounded_int

MAX_FEED_PAGE = 5000
router = APIRouter()


@router.post("/token")
async def token(request: Request, state: StateDep) -> JSONResponse:
    form = await request.form()
    grant_type = one(form, "grant_type")
    handler = GRANTS.get(grant_type)
    if handler is None:
        raise UnsupportedGrantTypeError(f"grant_type {grant_type or '(missing)'} is not supported")
    return render(await handler(TokenRequest(form, request.headers, state)))


@router.post("/introspect")
async def introspect(request: Request, state: StateDep) -> JSONResponse:
    """RFC 7662 §2: callers authenticate; anything but a live token is only {"active": false}."""
    form, runtime, settings = await request.form(), state.runtime, state.settings
    caller = await state.client_auth.authenticate(form, request.headers)
    if caller.auth_method == "none":
        raise UnauthorizedClientError("public clients may not introspect")
    inactive = JSONResponse({"active": False}, headers=NO_STORE)
    now = int(runtime.clock())
    try:
        claims = await tokens.verify_own(
            one(form, "token"), runtime.signing_keys, settings.base_url, [settings.fhir_base_url], now, 0
        )
    except TokenInvalidError:
        return inactive
    async with runtime.sessions() as session:
        row = await tokens.record(session, str(claims["jti"]))
    if row is None or row.revoked_at is not None or row.exp <= now:
        return inactive
    body = {"active": True, "token_type": "Bearer"}
    body.update(
        {
            k: claims[k]
            for k in ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "patient", "fhirUser")
            if k in claims
        }
    )
    return JSONResponse(body, headers=NO_STORE)


@router.post("/revoke")
async def revoke(request: Request, state: StateDep) -> JSONResponse:
    """RFC 7009 §2: 200 for unknown tokens; a client may revoke only its own tokens (the EHR
    also those it obtained for CDS Services)."""
    form, runtime, settings = await request.form(), state.runtime, state.settings
    caller = await state.client_auth.authenticate(form, request.headers, allow_public=True)
    now = int(runtime.clock())
    try:
        claims: dict[str, Any] | None = await tokens.verify_own(
            one(form, "token"), runtime.signing_keys, settings.base_url, [settings.fhir_base_url], now, 10**9
        )
    except TokenInvalidError:
        claims = None
    if claims is None:
        # Not one of our access tokens: perhaps a refresh token (RFC 7009 §2.1: revoking it
        # also revokes the access tokens of the same grant).
        async with runtime.sessions() as session, session.begin():
            revoked = await refresh.revoke_presented(session, one(form, "token"), caller, now)
        if revoked is False:
            raise UnauthorizedClientError("a client may revoke only its own tokens")
        return JSONResponse({}, headers=NO_STORE)
    async with runtime.sessions() as session, session.begin():
        await _revoke_access_token(session, str(claims["jti"]), caller, now)
    return JSONResponse({}, headers=NO_STORE)


async def _revoke_access_token(session: AsyncSession, jti: str, caller: Client, now: int) -> None:
    row = await tokens.record(session, jti)
    if row is None:
        return
    if caller.client_id not in (row.client_id, row.actor_client_id):
        raise UnauthorizedClientError("a client may revoke only its own tokens")
    await tokens.revoke(session, [row], now)


@router.get("/revocations")
async def revocations(runtime: RuntimeDep, after: str = Query("0"), limit: str = Query("1000")) -> JSONResponse:
    """The feed FHIR server replicas poll (every ≤ 0.5 s) to honour revocations within 1 s.

    It lists only jti values of revoked, unexpired tokens — identifiers of dead tokens, not
    credentials — so it needs no authentication. `after` is a sequence number (an INTEGER
    column) and `limit` a page size: anything else is `invalid_request`, never a 500.
    """
    after_seq = bounded_int(after, 0, INT32_MAX)
    if after_seq is None:
        raise InvalidRequestError(f"after must be an integer from 0 to {INT32_MAX}")
    page = bounded_int(limit, 1, MAX_FEED_PAGE)
    if page is None:
        raise InvalidRequestError(f"limit must be an integer from 1 to {MAX_FEED_PAGE}")
    now = int(runtime.clock())
    async with runtime.sessions() as session:
        rows = await tokens.feed(session, after_seq, now, page)
    # Sequence values can commit out of order under concurrency: pollers ask again from a
    # little before `last` and deduplicate by jti, so a late commit is never skipped.
    last = rows[-1].seq if rows else after_seq
    return JSONResponse(
        {"revocations": [{"jti": r.jti, "exp": r.exp} for r in rows], "last": last},
        headers={"Cache-Control": "no-store"},
    )
