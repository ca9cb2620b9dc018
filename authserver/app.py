"""Authorization server application factory.

Run alone with `uvicorn --factory authserver.app:create_app` (settings from MOCKEHR_AUTH_*).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from authserver.deps import RuntimeDep
from authserver.settings import AuthSettings
from common.app import service_app
from common.clock import Clock, system_clock
from common.settings import load_settings
from common.web import jwks_response


def metadata(settings: AuthSettings) -> dict[str, Any]:
    """RFC 8414 authorization server metadata: only what this server really offers today."""
    base = settings.base_url
    return {
        "issuer": base,
        "jwks_uri": f"{base}/jwks",
        "response_types_supported": [],
        "grant_types_supported": [],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES384", "RS384"],
    }


def create_app(settings: AuthSettings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or load_settings(AuthSettings)
    app = service_app(settings, title="mockehr authorization server", signing=True, clock=clock)

    @app.get("/jwks")
    @app.get("/.well-known/jwks.json")
    async def jwks(runtime: RuntimeDep) -> JSONResponse:
        return await jwks_response(runtime.keys)

    @app.get("/.well-known/oauth-authorization-server")
    async def oauth_metadata() -> JSONResponse:
        return JSONResponse(metadata(settings), headers={"Cache-Control": "public, max-age=300"})

    return app
