"""Issuing access tokens and the one token response every grant of /token returns.

RFC 6749 §5.1 (the successful response, `Cache-Control: no-store` and `Pragma: no-cache`), SMART
App Launch 2.2 "Response to a successful access token request" (launch context, smart_style_url),
RFC 8693 §2.2.1 (issued_token_type). Each grant builds a `TokenResponse`; the /token route
renders it once (`render`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from authserver import tokens
from authserver.errors import NO_STORE
from authserver.launch_context import LaunchContext
from authserver.settings import AuthSettings
from authserver.tokens import Grant, Issued
from authserver.users import User
from common.runtime import Runtime


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_in: int
    scope: str
    # Everything after the four RFC 6749 fields: launch context, id_token, refresh_token, ...
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
            **self.extra,
        }

    def with_fields(self, **fields: Any) -> TokenResponse:
        return TokenResponse(self.access_token, self.expires_in, self.scope, {**self.extra, **fields})


def render(response: TokenResponse) -> JSONResponse:
    return JSONResponse(response.body(), headers=NO_STORE)


# --- tokens for clients (client_credentials, token exchange) ------------------------------------


async def issue_grant(runtime: Runtime, settings: AuthSettings, grant: Grant, **extra: Any) -> TokenResponse:
    """An access token for a grant that needs no other row: one INSERT, committed by itself."""
    now = int(runtime.clock())
    async with tokens.autocommit(runtime.sessions) as session:
        issued = await tokens.issue(session, runtime.signing_keys, settings.base_url, grant, now)
        await session.commit()
    fields: dict[str, Any] = {"patient": grant.patient} if grant.patient else {}
    return TokenResponse(issued.token, grant.lifetime, grant.scope, {**fields, **extra})


# --- tokens for a signed-in user (authorization_code and refresh_token) ---------------------------


async def issue_user_token(
    session: AsyncSession,
    runtime: Runtime,
    settings: AuthSettings,
    *,
    client_id: str,
    user: User,
    scope: str,
    context: LaunchContext,
    family: str,
    now: int,
) -> Issued:
    """An RFC 9068 access token for the user, recorded under the grant `family` (so a code replay
    or a refresh-token reuse can revoke it). fhirUser is always present: the FHIR server needs it
    for user/ scopes, and it marks the token as user-bound."""
    grant = Grant(
        client_id=client_id,
        sub=user.username,
        scope=scope,
        audience=settings.fhir_base_url,
        lifetime=context.options.lifetime(settings.access_token_lifetime_seconds),
        grant=family,
        patient=context.patient,
        fhir_user=f"{settings.fhir_base_url.rstrip('/')}/{user.fhir_user}",
        encounter=context.encounter,
    )
    issued = await tokens.issue(session, runtime.signing_keys, settings.base_url, grant, now)
    if context.options.simulate_error == "token_revoked":
        # Launch options: refused by the FHIR server before its exp (launch_options.py).
        row = await tokens.record(session, issued.jti)
        await tokens.revoke(session, [row] if row is not None else [], now)
    return issued


def user_token_response(issued: Issued, scope: str, context: LaunchContext, settings: AuthSettings) -> TokenResponse:
    """SMART 2.2: the access token with the launch context and the style URL."""
    return TokenResponse(
        issued.token,
        context.options.lifetime(settings.access_token_lifetime_seconds),
        scope,
        {**context.response_fields(), "smart_style_url": settings.style_url},
    )
