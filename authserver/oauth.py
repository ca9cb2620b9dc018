"""The OAuth endpoints: /token, /introspect, /revoke, and the revocation feed.

/token grants: client_credentials (client_credentials.py), RFC 8693 token exchange
(token_exchange.py), and for SMART apps authorization_code (codes.py) and refresh_token
(refresh.py), where public clients identify with client_id and confidential ones authenticate.

Responses that carry tokens send `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749
§5.1); errors are RFC 6749 §5.2 JSON through the one OAuthError handler (app.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from authserver import clients, refresh, tokens
from authserver.client_auth import ClientAuthenticator
from authserver.client_credentials import client_credentials_grant
from authserver.codes import authorization_code_grant
from authserver.deps import RuntimeDep
from authserver.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidTargetError,
    UnauthorizedClientError,
    UnsupportedGrantTypeError,
)
from authserver.reach import FhirReach, ReachUnavailableError
from authserver.settings import AuthSettings
from authserver.subject import subject_user
from authserver.token_exchange import GRANT_TYPE as TOKEN_EXCHANGE
from authserver.token_exchange import ExchangeRequest, check_actor, check_service, exchange_grant
from authserver.tokens import TOKEN_TYPE_ACCESS, Grant
from authserver.users import User
from common.errors import TokenInvalidError
from common.numbers import INT32_MAX, bounded_int
from common.runtime import Runtime

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type name, not a secret
MAX_FEED_PAGE = 5000


def _one(form: Any, name: str) -> str:
    values = form.getlist(name)
    if len(values) > 1:  # RFC 6749 §3.2: parameters must not be repeated
        raise InvalidRequestError(f"{name} is repeated")
    return str(values[0]) if values else ""


def _audience(settings: AuthSettings, resource: str) -> str:
    # RFC 8707 §2: tokens are issued only for the resource servers this server knows.
    if resource and resource.rstrip("/") != settings.fhir_base_url.rstrip("/"):
        raise InvalidTargetError("resource is not a resource server of this authorization server")
    return settings.fhir_base_url


def oauth_router(settings: AuthSettings) -> APIRouter:
    router = APIRouter()

    def auth_of(request: Request) -> ClientAuthenticator:
        authenticator: ClientAuthenticator = request.app.state.client_auth
        return authenticator

    async def issue(runtime: Runtime, grant: Grant, extra: dict[str, Any]) -> JSONResponse:
        now = int(runtime.clock())
        # One INSERT (the token record): committed by itself, one round trip.
        async with tokens.autocommit(runtime.sessions) as session:
            issued = await tokens.issue(session, runtime.signing_keys, settings.base_url, grant, now)
            await session.commit()
        body = {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": grant.lifetime,
            "scope": grant.scope,
        }
        if grant.patient:
            body["patient"] = grant.patient
        body.update(extra)
        return JSONResponse(body, headers=NO_STORE)

    @router.post("/token")
    async def token(request: Request, runtime: RuntimeDep) -> JSONResponse:
        form = await request.form()
        grant_type = _one(form, "grant_type")
        if grant_type in (AUTHORIZATION_CODE, REFRESH_TOKEN):
            app = await _app_of(request, runtime, form, grant_type)
            _audience(settings, _one(form, "resource"))
            if grant_type == AUTHORIZATION_CODE:
                body = await authorization_code_grant(runtime, settings, app, form)
            else:
                body = await refresh.refresh_token_grant(runtime, settings, app, form, request.app.state.reach.can_see)
            return JSONResponse(body, headers=NO_STORE)
        if grant_type not in ("client_credentials", TOKEN_EXCHANGE):
            raise UnsupportedGrantTypeError(f"grant_type {grant_type or '(missing)'} is not supported")
        client = await auth_of(request).authenticate(form, request.headers)
        audience = _audience(settings, _one(form, "resource"))
        lifetime = settings.access_token_lifetime_seconds
        if grant_type == "client_credentials":
            return await issue(runtime, client_credentials_grant(client, _one(form, "scope"), audience, lifetime), {})
        return await issue(
            runtime, await _exchange(request, runtime, form, client, audience), {"issued_token_type": TOKEN_TYPE_ACCESS}
        )

    async def _app_of(request: Request, runtime: Runtime, form: Any, grant_type: str) -> clients.Client:
        """The SMART app making a user grant request: authenticated, or public and identified."""
        if grant_type == REFRESH_TOKEN and not auth_of(request).identifies_itself(form, request.headers):
            # RFC 6749 §6: a public client need not send client_id on a refresh (fhirclient.js
            # does not by default): the refresh token names its client. A confidential client
            # must still authenticate; binding, rotation and reuse detection apply as usual.
            issued_to = await refresh.owner(runtime, form)
            if issued_to is None:
                raise InvalidGrantError("the refresh token is invalid")
            return await auth_of(request).public_client(issued_to)
        return await auth_of(request).authenticate(form, request.headers, allow_public=True)

    async def _exchange(request: Request, runtime: Runtime, form: Any, actor: clients.Client, audience: str) -> Grant:
        check_actor(actor)
        patient = _one(form, "patient")
        if not patient:
            raise InvalidRequestError("patient is required")
        # No cds_service: the EHR asks for a token for itself as the user (token_exchange.py).
        cds_service = _one(form, "cds_service")
        service = None
        if cds_service:
            async with tokens.autocommit(runtime.sessions) as session:  # one lookup: no BEGIN/ROLLBACK
                service = check_service(await clients.get(session, cds_service))
        # subject_user records the assertion's jti through a session of its own before it reads
        # through this one, which takes its connection only then: a request never holds one pooled
        # connection while it waits for another (which deadlocks once requests outnumber the pool).
        async with runtime.sessions() as session:
            user = await subject_user(
                session,
                _one(form, "subject_token"),
                _one(form, "subject_token_type"),
                actor,
                auth_of(request),
                runtime.signing_keys,
                settings.base_url,
                [settings.fhir_base_url],
                int(runtime.clock()),
            )
        reach: FhirReach = request.app.state.reach

        async def can_see(u: User, patient_id: str) -> bool:
            try:
                return await reach.can_see(u, patient_id)
            except ReachUnavailableError as exc:
                raise InvalidRequestError("the patient could not be checked right now; try again") from exc

        exchange = ExchangeRequest(
            actor=actor, service=service, user=user, patient=patient, scope=_one(form, "scope"), audience=audience
        )
        return await exchange_grant(exchange, can_see, settings.access_token_lifetime_seconds)

    @router.post("/introspect")
    async def introspect(request: Request, runtime: RuntimeDep) -> JSONResponse:
        """RFC 7662 §2: callers authenticate; anything but a live token is only {"active": false}."""
        form = await request.form()
        caller = await auth_of(request).authenticate(form, request.headers)
        if caller.auth_method == "none":
            raise UnauthorizedClientError("public clients may not introspect")
        inactive = JSONResponse({"active": False}, headers=NO_STORE)
        now = int(runtime.clock())
        try:
            claims = await tokens.verify_own(
                _one(form, "token"), runtime.signing_keys, settings.base_url, [settings.fhir_base_url], now, 0
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
    async def revoke(request: Request, runtime: RuntimeDep) -> JSONResponse:
        """RFC 7009 §2: 200 for unknown tokens; a client may revoke only its own tokens (the EHR
        also those it obtained for CDS Services)."""
        form = await request.form()
        caller = await auth_of(request).authenticate(form, request.headers, allow_public=True)
        now = int(runtime.clock())
        try:
            claims: dict[str, Any] | None = await tokens.verify_own(
                _one(form, "token"), runtime.signing_keys, settings.base_url, [settings.fhir_base_url], now, 10**9
            )
        except TokenInvalidError:
            claims = None
        if claims is None:
            # Not one of our access tokens: perhaps a refresh token (RFC 7009 §2.1: revoking it
            # also revokes the access tokens of the same grant).
            async with runtime.sessions() as session, session.begin():
                revoked = await refresh.revoke_presented(session, _one(form, "token"), caller, now)
            if revoked is False:
                raise UnauthorizedClientError("a client may revoke only its own tokens")
            return JSONResponse({}, headers=NO_STORE)
        async with runtime.sessions() as session, session.begin():
            row = await tokens.record(session, str(claims["jti"]))
            if row is None:
                return JSONResponse({}, headers=NO_STORE)
            if caller.client_id not in (row.client_id, row.actor_client_id):
                raise UnauthorizedClientError("a client may revoke only its own tokens")
            await tokens.revoke(session, [row], now)
        return JSONResponse({}, headers=NO_STORE)

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

    return router
