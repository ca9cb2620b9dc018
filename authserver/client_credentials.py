"""The client_credentials grant for backend services (SMART Backend Services; RFC 6749 §4.4).

Only confidential clients authenticated with private_key_jwt; only system/ scopes, never more
than the client was pre-authorised for; at most 300 s; no refresh token; audience the FHIR base
(RFC 8707 `resource`, if given, must name it).
"""

from __future__ import annotations

from authserver.clients import Client
from authserver.errors import InvalidScopeError, UnauthorizedClientError
from authserver.tokens import Grant
from common.scopes import InvalidScopeError as ScopeSyntaxError
from common.scopes import narrow, parse_scopes


def client_credentials_grant(client: Client, requested_scope: str, audience: str, lifetime: int) -> Grant:
    if client.kind not in ("backend", "cds-service") or client.auth_method != "private_key_jwt":
        raise UnauthorizedClientError("client_credentials is for backend clients with private_key_jwt")
    try:
        requested = parse_scopes(requested_scope or client.scope)
        allowed = parse_scopes(client.scope)
    except ScopeSyntaxError as exc:
        raise InvalidScopeError(str(exc)) from None
    if any(r.context != "system" for r in requested.resources):
        raise InvalidScopeError("backend services may ask for system/ scopes only")
    granted = narrow(requested, allowed)
    if not granted.resources:
        raise InvalidScopeError("none of the requested scopes is pre-authorised for this client")
    return Grant(
        client_id=client.client_id,
        sub=client.client_id,
        scope=str(granted),
        audience=audience,
        lifetime=lifetime,
        grant=f"client_credentials:{client.client_id}",
    )
