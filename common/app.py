"""The skeleton every service's `create_app` starts from: lifespan runtime, headers, health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.clock import Clock
from common.health import Check, health_router
from common.middleware import SecurityHeadersMiddleware, limit_bodies
from common.runtime import Runtime, open_runtime
from common.settings import ServiceSettings


def service_app(
    settings: ServiceSettings,
    *,
    title: str,
    signing: bool,
    clock: Clock,
    on_start: Callable[[FastAPI, Runtime], None] | None = None,
    on_stop: Callable[[FastAPI], Awaitable[None]] | None = None,
    extra_checks: Callable[[FastAPI], Mapping[str, Check]] | None = None,
) -> FastAPI:
    """A FastAPI app whose lifespan opens the service's Runtime (DB, HTTP client, keys).

    Every request body is bounded before anything reads it (`limit_bodies`), and no path is
    redirected. /healthz and /readyz come with it; readiness checks the database, the keys of a signing
    service, and whatever `extra_checks` adds. No OpenAPI schema or docs pages are served.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_runtime(settings, signing=signing, clock=clock) as runtime:
            app.state.runtime = runtime
            if on_start is not None:
                on_start(app, runtime)
            try:
                yield
            finally:
                if on_stop is not None:
                    await on_stop(app)

    # redirect_slashes off: Starlette would answer `/x/` with a redirect to `/x` on the URL built
    # from the Host header, before any authentication; such a path is simply not found.
    app = FastAPI(
        title=title, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False
    )
    app.state.settings = settings
    # Bodies are bounded first (inside the headers, so refusals carry them too); each service
    # shapes the refusals with its handler for BodyRefusedError.
    limit_bodies(app, max_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)

    def checks() -> Mapping[str, Check]:
        runtime: Runtime = app.state.runtime
        found: dict[str, Check] = {"database": runtime.check_db}
        if signing:
            found["keys"] = runtime.check_keys
        if extra_checks is not None:
            found.update(extra_checks(app))
        return found

    app.include_router(health_router(checks))
    return app
