"""EHR application factory.

Run alone with `uvicorn --factory ehr.app:create_app` (settings from MOCKEHR_EHR_*).
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from common.app import service_app
from common.clock import Clock, system_clock
from common.errors import BodyRefusedError
from common.overload import install_overload_handlers
from common.settings import load_settings
from common.web import jwks_response
from ehr.cds_wiring import CdsWiring
from ehr.deps import RuntimeDep
from ehr.settings import EhrSettings
from ehr.ui.install import install_ui


def create_app(
    settings: EhrSettings | None = None,
    *,
    clock: Clock = system_clock,
    transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    settings = settings or load_settings(EhrSettings)
    # The CDS Hooks client: engine, registry, card actions and the /api routes (ehr/cds_wiring.py).
    cds = CdsWiring(settings, clock=clock, transport=transport)
    app = service_app(
        settings, title="mockehr EHR", signing=True, clock=clock, on_start=cds.on_start, on_stop=cds.on_stop
    )
    cds.install(app)

    @app.exception_handler(BodyRefusedError)
    async def body_refused(request: Request, exc: BodyRefusedError) -> Response:
        # The JSON API (and the UI's script endpoints) get the API's error shape; pages get text.
        if request.url.path.startswith(("/api/", "/ui/")):
            code = "too_large" if exc.status == 413 else "invalid_request"
            body = {"error": code, "message": exc.message}
            return JSONResponse(body, status_code=exc.status, headers={"Cache-Control": "no-store"})
        return PlainTextResponse(exc.message, status_code=exc.status)

    def overloaded(request: Request, reason: str) -> Response:
        if request.url.path.startswith(("/api/", "/ui/")):
            body = {"error": "unavailable", "message": reason}
            return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})
        return PlainTextResponse(reason, status_code=503, headers={"Cache-Control": "no-store"})

    install_overload_handlers(app, overloaded)

    # CDS Hooks 2.0 "Trusting CDS Clients": the EHR publishes its JWT signing keys as a JWK Set;
    # CDS Services are told this URL (and may see it as `jku`).
    @app.get("/.well-known/jwks.json")
    async def jwks(runtime: RuntimeDep) -> JSONResponse:
        return await jwks_response(runtime.keys)

    install_ui(app, settings)  # the web UI (ehr/ui): pages, static files, the API's session resolver
    return app
