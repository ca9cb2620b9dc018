"""Authorization server application factory.

Run alone with `uvicorn --factory authserver.app:create_app` (settings from MOCKEHR_AUTH_*).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from authserver.admin import admin_router
from authserver.client_auth import ClientAuthenticator
from authserver.deps import RuntimeDep
from authserver.errors import OAuthError
from authserver.oauth import NO_STORE, oauth_router
from authserver.reach import FhirReach
from authserver.settings import AuthSettings
from authserver.token_exchange import GRANT_TYPE as TOKEN_EXCHANGE
from common.app import service_app
from common.clock import Clock, system_clock
from common.runtime import Runtime
from common.settings import load_settings
from common.web import jwks_response


def metadata(settings: AuthSettings) -> dict[str, Any]:
    """RFC 8414 authorization server metadata: what this server really offers today."""
    base = settings.base_url
    return {
        "issuer": base,
        "jwks_uri": f"{base}/jwks",
        "token_endpoint": f"{base}/token",
        "introspection_endpoint": f"{base}/introspect",
        "revocation_endpoint": f"{base}/revoke",
        "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": list(settings.client_assertion_algorithms),
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "code_challenge_methods_supported": ["S256"],
    }


def create_app(settings: AuthSettings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or load_settings(AuthSettings)

    def on_start(app: FastAPI, runtime: Runtime) -> None:
        app.state.client_auth = ClientAuthenticator(
            sessions=runtime.sessions,
            token_url=f"{settings.base_url}/token",
            algorithms=tuple(settings.client_assertion_algorithms),
            clock=clock,
            leeway=settings.jwt_leeway_seconds,
            http=runtime.http,
        )
        app.state.reach = FhirReach(
            runtime.http, runtime.signing_keys, settings.base_url, settings.fhir_base_url, clock
        )

    app = service_app(settings, title="mockehr authorization server", signing=True, clock=clock, on_start=on_start)

    @app.exception_handler(OAuthError)
    async def oauth_error(_request: Request, exc: OAuthError) -> JSONResponse:
        body = {"error": exc.error}
        if exc.description:
            body["error_description"] = exc.description
        headers = dict(NO_STORE)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
        return JSONResponse(body, status_code=exc.status, headers=headers)

    app.include_router(oauth_router(settings))
    app.include_router(admin_router(settings))

    @app.get("/jwks")
    @app.get("/.well-known/jwks.json")
    async def jwks(runtime: RuntimeDep) -> JSONResponse:
        return await jwks_response(runtime.keys)

    @app.get("/.well-known/oauth-authorization-server")
    async def oauth_metadata() -> JSONResponse:
        return JSONResponse(metadata(settings), headers={"Cache-Control": "public, max-age=300"})

    return app
