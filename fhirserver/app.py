"""FHIR server application factory.

Run alone with `uvicorn --factory fhirserver.app:create_app` (settings from MOCKEHR_FHIR_*).
Without a token only /fhir/metadata and /fhir/.well-known/smart-configuration answer.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from common.app import service_app
from common.app_origins import registered_origins
from common.clock import Clock, system_clock
from common.cors import CorsMiddleware
from common.runtime import Runtime
from common.settings import load_settings
from fhirserver.failures import install_failure_handlers
from fhirserver.routes import install_routes
from fhirserver.settings import FhirSettings
from fhirserver.state import close_state, fhir_state, open_state, readiness_checks


def create_app(
    settings: FhirSettings | None = None,
    *,
    clock: Clock = system_clock,
    authserver_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """`authserver_client` replaces the client used to reach the authorization server (JWKS and
    revocation feed) — for composing the services in one process."""
    fhir_settings = settings or load_settings(FhirSettings)
    cursor_key = fhir_settings.cursor_secret()  # read (or refused, in production) before serving

    def on_start(app: FastAPI, runtime: Runtime) -> None:
        app.state.fhir = open_state(
            fhir_settings, runtime, clock=clock, cursor_key=cursor_key, authserver_client=authserver_client
        )

    async def on_stop(app: FastAPI) -> None:
        await close_state(fhir_state(app))

    app = service_app(
        fhir_settings,
        title="mockehr FHIR server",
        signing=False,
        clock=clock,
        on_start=on_start,
        on_stop=on_stop,
        extra_checks=lambda app: readiness_checks(fhir_state(app)),
    )
    install_failure_handlers(app)
    # Outermost, so a preflight from an allowed origin (configured, or of a registered SMART app)
    # is answered before any route or guard.
    app.add_middleware(
        CorsMiddleware,
        origins=fhir_settings.cors_origins,
        methods_for=_cors_methods,
        allow_headers=("Authorization", "Content-Type", "Accept", "If-Match", "If-None-Exist", "Prefer"),
        expose_headers=("Location", "ETag", "Content-Location", "Last-Modified"),
        registered=registered_origins(app),
    )
    install_routes(app)
    return app


def _cors_methods(path: str) -> str | None:
    """Every /fhir path takes part in CORS (metadata and smart-configuration included)."""
    return "GET, POST, PUT, DELETE, OPTIONS" if path == "/fhir" or path.startswith("/fhir/") else None
