"""The grants of the token endpoint: grant_type → handler (RFC 6749 §4.1.3, §4.4, §6; RFC 8693).

Each handler authenticates (or, for a public SMART app, identifies) the client as its grant
requires, checks the RFC 8707 `resource`, applies the grant's rules (codes.py, refresh.py,
client_credentials.py, token_exchange.py) and returns the TokenResponse that the /token route
renders once (oauth.py, token_response.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers

from authserver import clients, refresh, tokens
from authserver.client_auth import ClientAuthenticator
from authserver.client_credentials import client_credentials_grant
from authserver.codes import authorization_code_grant
from authserver.deps import AuthState
from authserver.errors import InvalidGrantError, InvalidRequestError, InvalidTargetError
from authserver.forms import one
from authserver.reach import ReachUnavailableError
from authserver.settings import AuthSettings
from authserver.subject import subject_user
from authserver.token_exchange import ExchangeRequest, check_actor, check_service, exchange_grant
from authserver.token_response import TokenResponse, issue_grant
from authserver.tokens import TOKEN_TYPE_ACCESS, Grant
from authserver.users import User
from common.discovery import AUTHORIZATION_CODE, CLIENT_CREDENTIALS, REFRESH_TOKEN, TOKEN_EXCHANGE
from common.runtime import Runtime


@dataclass(frozen=True)
class TokenRequest:
    form: Any  # the parsed form (starlette FormData)
    headers: Headers
    state: AuthState

    @property
    def runtime(self) -> Runtime:
        return self.state.runtime

    @property
    def settings(self) -> AuthSettings:
        return self.state.settings

    @property
    def auth(self) -> ClientAuthenticator:
        return self.state.client_auth

    async def can_see(self, user: User, patient_id: str) -> bool:
        """The reach check, failing closed with an OAuth error when the FHIR server cannot
        answer (raised inside a grant's transaction, it also rolls back what the grant did)."""
        try:
            return await self.state.reach.can_see(user, patient_id)
        except ReachUnavailableError as exc:
            raise InvalidRequestError("the patient could not be checked right now; try again") from exc


GrantHandler = Callable[[TokenRequest], Awaitable[TokenResponse]]


def audience(settings: AuthSettings, resource: str) -> str:
    # RFC 8707 §2: tokens are issued only for the resource servers this server knows.
    if resource and resource.rstrip("/") != settings.fhir_base_url.rstrip("/"):
        raise InvalidTargetError("resource is not a resource server of this authorization server")
    return settings.fhir_base_url


async def smart_app(req: TokenRequest, grant_type: str) -> clients.Client:
    """The SMART app making a user grant request: authenticated, or public and identified."""
    if grant_type == REFRESH_TOKEN and not req.auth.identifies_itself(req.form, req.headers):
        # RFC 6749 §6: a public client need not send client_id on a refresh (fhirclient.js
        # does not by default): the refresh token names its client. A confidential client
        # must still authenticate; binding, rotation and reuse detection apply as usual.
        issued_to = await refresh.owner(req.runtime, req.form)
        if issued_to is None:
            raise InvalidGrantError("the refresh token is invalid")
        return await req.auth.public_client(issued_to)
    return await req.auth.authenticate(req.form, req.headers, allow_public=True)


async def authorization_code(req: TokenRequest) -> TokenResponse:
    app = await smart_app(req, AUTHORIZATION_CODE)
    audience(req.settings, one(req.form, "resource"))
    return await authorization_code_grant(req.runtime, req.settings, app, req.form)


async def refresh_token(req: TokenRequest) -> TokenResponse:
    app = await smart_app(req, REFRESH_TOKEN)
    audience(req.settings, one(req.form, "resource"))
    return await refresh.refresh_token_grant(req.runtime, req.settings, app, req.form, req.can_see)


async def client_credentials(req: TokenRequest) -> TokenResponse:
    client = await req.auth.authenticate(req.form, req.headers)
    aud = audience(req.settings, one(req.form, "resource"))
    lifetime = req.settings.access_token_lifetime_seconds
    return await issue_grant(
        req.runtime, req.settings, client_credentials_grant(client, one(req.form, "scope"), aud, lifetime)
    )


async def token_exchange(req: TokenRequest) -> TokenResponse:
    actor = await req.auth.authenticate(req.form, req.headers)
    aud = audience(req.settings, one(req.form, "resource"))
    grant = await _exchange(req, actor, aud)
    return await issue_grant(req.runtime, req.settings, grant, issued_token_type=TOKEN_TYPE_ACCESS)


async def _exchange(req: TokenRequest, actor: clients.Client, aud: str) -> Grant:
    check_actor(actor)
    form, runtime, settings = req.form, req.runtime, req.settings
    patient = one(form, "patient")
    if not patient:
        raise InvalidRequestError("patient is required")
    # No cds_service: the EHR asks for a token for itself as the user (token_exchange.py).
    cds_service = one(form, "cds_service")
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
            one(form, "subject_token"),
            one(form, "subject_token_type"),
            actor,
            req.auth,
            runtime.signing_keys,
            settings.base_url,
            [settings.fhir_base_url],
            int(runtime.clock()),
        )
    exchange = ExchangeRequest(
        actor=actor, service=service, user=user, patient=patient, scope=one(form, "scope"), audience=aud
    )
    return await exchange_grant(exchange, req.can_see, settings.access_token_lifetime_seconds)


GRANTS: Mapping[str, GrantHandler] = {
    AUTHORIZATION_CODE: authorization_code,
    REFRESH_TOKEN: refresh_token,
    CLIENT_CREDENTIALS: client_credentials,
    TOKEN_EXCHANGE: token_exchange,
}
