"""Example CDS Service application factory.

Run alone with `python -m examples.cds_service` (MOCKEHR_CDS_*; see serve.py) or under
`uvicorn --factory examples.cds_service.app:create_app`.

The routes are in routes.py, each authenticating the CDS Client's JWT first. Only the size and
nesting of a body are checked before that (413, 400), so that a stranger cannot make the service
hold or parse more than its limits.
"""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from common.clock import Clock, system_clock
from common.cors import CorsMiddleware
from common.health import health_router
from common.middleware import SecurityHeadersMiddleware, limit_bodies
from common.settings import load_settings
from examples.cds_service import routes
from examples.cds_service.connections import checks, lifespan
from examples.cds_service.error_handlers import install_error_handlers
from examples.cds_service.feedback import FeedbackLog, IssuedCards
from examples.cds_service.settings import CdsSettings
from examples.cds_service.state import CdsState


def _cors_methods(path: str) -> str | None:
    if path == "/cds-services":
        return "GET"
    if path.startswith("/cds-services/"):
        return "POST"
    return None


def create_app(
    settings: CdsSettings | None = None,
    *,
    clock: Clock = system_clock,
    http_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """The app. `http_client` (tests) replaces the outbound client used for JWKS and FHIR calls."""
    settings = settings or load_settings(CdsSettings)
    state = CdsState(settings, clock, IssuedCards(clock), FeedbackLog(), http_client=http_client)
    # No redirect_slashes: a redirect would be built from the Host header, before authentication.
    app = FastAPI(
        title="mockehr example CDS Service",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.state.cds = state
    # Bounded before the JWT is even looked at: a stranger cannot make this service hold more
    # than max_body_bytes, nor parse deeper than max_json_depth.
    limit_bodies(app, max_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)
    # Outermost: a preflight from a configured origin is answered before routing or auth
    # (a browser sends no Authorization header on a preflight).
    app.add_middleware(
        CorsMiddleware,
        origins=settings.cors_origins,
        methods_for=_cors_methods,
        allow_headers=("Authorization", "Content-Type", "Accept"),
    )
    install_error_handlers(app)
    app.include_router(health_router(lambda: checks(state)))
    app.include_router(routes.router)
    return app
