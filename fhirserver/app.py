"""FHIR server application factory.

Run alone with `uvicorn --factory fhirserver.app:create_app` (settings from MOCKEHR_FHIR_*).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from common.app import service_app
from common.clock import Clock, system_clock
from common.health import Check
from common.jwks import JwksCache
from common.runtime import Runtime
from common.settings import load_settings
from fhirserver.capability import capability_statement
from fhirserver.settings import FhirSettings

FHIR_JSON = "application/fhir+json"


def create_app(settings: FhirSettings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or load_settings(FhirSettings)
    started = dt.datetime.fromtimestamp(clock(), dt.UTC).isoformat(timespec="seconds")

    def on_start(app: FastAPI, runtime: Runtime) -> None:
        app.state.jwks = JwksCache(runtime.http, settings.authserver_jwks_url, clock=clock)

    def extra_checks(app: FastAPI) -> Mapping[str, Check]:
        async def authserver_keys() -> None:
            await app.state.jwks.key_set()

        return {"authserver_jwks": authserver_keys}

    app = service_app(
        settings, title="mockehr FHIR server", signing=False, clock=clock, on_start=on_start, extra_checks=extra_checks
    )

    @app.get("/fhir/metadata")
    async def metadata() -> JSONResponse:
        return JSONResponse(capability_statement(settings, started), media_type=FHIR_JSON)

    return app
