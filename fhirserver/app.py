"""FHIR server application factory.

Run alone with `uvicorn --factory fhirserver.app:create_app` (settings from MOCKEHR_FHIR_*).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from common.clock import Clock, system_clock
from common.health import Check, health_router
from common.jwks import JwksCache
from common.middleware import SecurityHeadersMiddleware
from common.runtime import open_runtime
from common.settings import load_settings
from fhirserver.capability import capability_statement
from fhirserver.settings import FhirSettings

FHIR_JSON = "application/fhir+json"


def create_app(settings: FhirSettings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or load_settings(FhirSettings)
    started = dt.datetime.fromtimestamp(clock(), dt.UTC).isoformat(timespec="seconds")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings, signing=False, clock=clock) as runtime:
            app.state.runtime = runtime
            app.state.jwks = JwksCache(runtime.http, settings.authserver_jwks_url, clock=clock)
            yield

    app = FastAPI(title="mockehr FHIR server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)

    async def authserver_keys() -> None:
        await app.state.jwks.key_set()

    def checks() -> Mapping[str, Check]:
        return {"database": app.state.runtime.check_db, "authserver_jwks": authserver_keys}

    app.include_router(health_router(checks))

    @app.get("/fhir/metadata")
    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse(capability_statement(settings, started), media_type=FHIR_JSON)

    return app
