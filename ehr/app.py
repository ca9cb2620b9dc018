"""EHR application factory.

Run alone with `uvicorn --factory ehr.app:create_app` (settings from MOCKEHR_EHR_*).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from common.clock import Clock, system_clock
from common.health import Check, health_router
from common.middleware import SecurityHeadersMiddleware
from common.runtime import open_runtime
from common.settings import load_settings
from common.web import jwks_response
from ehr.deps import RuntimeDep
from ehr.settings import EhrSettings


def create_app(settings: EhrSettings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or load_settings(EhrSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings, signing=True, clock=clock) as runtime:
            app.state.runtime = runtime
            yield

    app = FastAPI(title="mockehr EHR", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)

    def checks() -> Mapping[str, Check]:
        runtime = app.state.runtime
        return {"database": runtime.check_db, "keys": runtime.check_keys}

    app.include_router(health_router(checks))

    # CDS Hooks 2.0 "Trusting CDS Clients": the EHR publishes its JWT signing keys as a JWK Set;
    # CDS Services are told this URL (and may see it as `jku`).
    @app.get("/.well-known/jwks.json")
    async def jwks(runtime: RuntimeDep) -> JSONResponse:
        return await jwks_response(runtime.keys)

    return app
