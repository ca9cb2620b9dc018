"""Example SMART app (EHR launch, SMART App Launch 2.2), a public client with PKCE S256, on Python `fhirclient`.

Run alone with `uvicorn --factory examples.smart_app.app:create_app` (settings MOCKEHR_SMART_*).

The routes are in routes.py, the state (and the worker thread every network step of the
synchronous fhirclient runs in) in state.py. Of mockehr the app uses only `common` (JWT
verification, security headers, settings), as any third-party app would use its own libraries.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI
from requests.adapters import BaseAdapter

from common.clock import Clock, system_clock
from common.health import Check, health_router
from common.logs import configure_logging
from common.middleware import SecurityHeadersMiddleware, limit_bodies
from common.settings import load_settings
from examples.smart_app import routes
from examples.smart_app.launches import PendingLaunches
from examples.smart_app.routes import LAUNCH_COOKIE
from examples.smart_app.settings import SmartAppSettings
from examples.smart_app.smart import discover
from examples.smart_app.state import SmartState, smart_state

__all__ = ["LAUNCH_COOKIE", "create_app"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = smart_state(app).settings
    configure_logging(settings.log_level, settings.service_name)
    # fhirclient logs the token response (id_token included) at DEBUG and warns that it
    # ignores every id_token (this app verifies it): only its errors belong in the logs.
    logging.getLogger("fhirclient").setLevel(logging.ERROR)
    yield


def checks(state: SmartState) -> Mapping[str, Check]:
    async def smart_configuration_readable() -> None:
        await state.blocking(lambda session: discover(session, state.settings.fhir_base_url.rstrip("/")))

    return {"smart_configuration": smart_configuration_readable}


def create_app(
    settings: SmartAppSettings | None = None,
    *,
    clock: Clock = system_clock,
    adapter: BaseAdapter | None = None,  # tests: the FHIR and authorization servers, in place of the network
) -> FastAPI:
    settings = settings or load_settings(SmartAppSettings)
    state = SmartState(settings, clock, PendingLaunches(ttl=settings.pending_seconds, clock=clock), adapter)
    # No redirect_slashes: a redirect would be built from the Host header.
    app = FastAPI(
        title="mockehr example SMART app",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.state.smart = state
    # The app takes no bodies at all; whatever is sent is bounded before anything reads it.
    limit_bodies(app, max_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)
    app.include_router(routes.router)
    app.include_router(health_router(lambda: checks(state)))
    return app
