"""Authorization server application factory.

Run alone with `uvicorn --factory authserver.app:create_app` (settings from MOCKEHR_AUTH_*).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from authserver.admin import AdminUnauthorizedError, admin_router
from authserver.authorize import FhirPatients, authorize_router
from authserver.client_auth import ClientAuthenticator
from authserver.cors import CorsMiddleware
from authserver.deps import RuntimeDep
from authserver.errors import OAuthError
from authserver.launch import launch_router
from authserver.login import login_router
from authserver.maintenance import Housekeeper
from authserver.oauth import AUTHORIZATION_CODE, NO_STORE, REFRESH_TOKEN, oauth_router
from authserver.reach import FhirReach
from authserver.sessions import CsrfSigner
from authserver.settings import AuthSettings
from authserver.token_exchange import GRANT_TYPE as TOKEN_EXCHANGE
from common.app import service_app
from common.app_origins import registered_origins
from common.clock import Clock, system_clock
from common.errors import BodyRefusedError
from common.overload import install_overload_handlers
from common.runtime import Runtime
from common.settings import load_settings
from common.web import jwks_response

SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.rs",
    "user/*.cruds",
    "system/*.rs",
]
# The pages a browser posts forms to (login.py, authorize.py); every other route is for programs.
BROWSER_PAGES = frozenset({"/login", "/logout", "/authorize", "/authorize/select"})
# The SMART style document behind `smart_style_url` (SMART App Launch 2.2 "Styling").
SMART_STYLE = {
    "color_background": "#f4f6f8",
    "color_error": "#8a1c12",
    "color_highlight": "#2563a6",
    "color_modal_backdrop": "",
    "color_success": "#1e7a3c",
    "color_text": "#1d2733",
    "dim_border_radius": "0.5em",
    "dim_font_size": "1em",
    "dim_spacing_size": "1em",
    "font_family_body": "system-ui, sans-serif",
    "font_family_heading": "system-ui, sans-serif",
}


def metadata(settings: AuthSettings) -> dict[str, Any]:
    """RFC 8414 authorization server metadata: what this server really offers today."""
    base = settings.base_url
    return {
        "issuer": base,
        "authorization_endpoint": f"{base}/authorize",
        "jwks_uri": f"{base}/jwks",
        "token_endpoint": f"{base}/token",
        "introspection_endpoint": f"{base}/introspect",
        "revocation_endpoint": f"{base}/revoke",
        "grant_types_supported": [AUTHORIZATION_CODE, REFRESH_TOKEN, "client_credentials", TOKEN_EXCHANGE],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "scopes_supported": SCOPES_SUPPORTED,
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(settings.client_assertion_algorithms),
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,  # RFC 9207
    }


def openid_configuration(settings: AuthSettings) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 §3: only what this server does (no userinfo endpoint)."""
    base = settings.base_url
    return {
        "issuer": base,
        "authorization_endpoint": f"{base}/authorize",
        "token_endpoint": f"{base}/token",
        "jwks_uri": f"{base}/jwks",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": [AUTHORIZATION_CODE, REFRESH_TOKEN],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [settings.signing_alg],
        "scopes_supported": SCOPES_SUPPORTED,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "fhirUser", "name"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(settings.client_assertion_algorithms),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
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
        reach = FhirReach(runtime.http, runtime.signing_keys, settings.base_url, settings.fhir_base_url, clock)
        app.state.reach = reach
        app.state.patients = FhirPatients(reach)  # the patient picker's list (authorize.py)
        app.state.csrf = CsrfSigner(settings.kek())
        app.state.housekeeper = Housekeeper(runtime.sessions, clock)
        app.state.housekeeper.start()

    async def on_stop(app: FastAPI) -> None:
        await app.state.housekeeper.stop()

    app = service_app(
        settings, title="mockehr authorization server", signing=True, clock=clock, on_start=on_start, on_stop=on_stop
    )

    @app.exception_handler(AdminUnauthorizedError)
    async def admin_unauthorized(_request: Request, _exc: AdminUnauthorizedError) -> Response:
        return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(OAuthError)
    async def oauth_error(_request: Request, exc: OAuthError) -> JSONResponse:
        body = {"error": exc.error}
        if exc.description:
            body["error_description"] = exc.description
        headers = dict(NO_STORE)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(BodyRefusedError)
    async def body_refused(request: Request, exc: BodyRefusedError) -> Response:
        # The browser's pages get text; every endpoint a program calls (token, introspection,
        # revocation, launch registration, admin) the OAuth error shape (RFC 6749 §5.2).
        if request.url.path in BROWSER_PAGES:
            return PlainTextResponse(exc.message, status_code=exc.status, headers=dict(NO_STORE))
        body = {"error": "invalid_request", "error_description": exc.message}
        return JSONResponse(body, status_code=exc.status, headers=dict(NO_STORE))

    def overloaded(request: Request, reason: str) -> Response:
        if request.url.path in BROWSER_PAGES:
            return PlainTextResponse(reason, status_code=503, headers=dict(NO_STORE))
        # RFC 6749 §4.1.2.1 names this error for a server that is "temporarily overloaded".
        body = {"error": "temporarily_unavailable", "error_description": reason}
        return JSONResponse(body, status_code=503, headers=dict(NO_STORE))

    install_overload_handlers(app, overloaded)

    app.include_router(oauth_router(settings))
    app.include_router(admin_router(settings))
    app.include_router(login_router(settings))
    app.include_router(authorize_router(settings))
    app.include_router(launch_router(settings))
    app.add_middleware(CorsMiddleware, origins=settings.cors_origins, registered=registered_origins(app))

    @app.get("/jwks")
    @app.get("/.well-known/jwks.json")
    async def jwks(runtime: RuntimeDep) -> JSONResponse:
        return await jwks_response(runtime.keys)

    @app.get("/.well-known/oauth-authorization-server")
    async def oauth_metadata() -> JSONResponse:
        return JSONResponse(metadata(settings), headers={"Cache-Control": "public, max-age=300"})

    @app.get("/.well-known/openid-configuration")
    async def oidc_metadata() -> JSONResponse:
        return JSONResponse(openid_configuration(settings), headers={"Cache-Control": "public, max-age=300"})

    @app.get("/smart-style.json")
    async def smart_style() -> JSONResponse:
        return JSONResponse(SMART_STYLE, headers={"Cache-Control": "public, max-age=3600"})

    return app
