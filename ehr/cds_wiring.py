"""Wiring the CDS Hooks client into the EHR app: the engine, the registry, card actions, the
JSON API and its error handlers. Everything is built in the lifespan (nothing at import)."""

from __future__ import annotations

import logging

import httpx
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.clock import Clock
from common.http import make_http_client
from common.runtime import Runtime
from ehr.api import api_router
from ehr.authserver_admin import AuthserverAdmin
from ehr.errors import ApiError, Unauthenticated
from ehr.feedback import FeedbackSender
from ehr.hooks import HOOKS
from ehr.invoke import CdsEngine
from ehr.prefetch import check_template
from ehr.registry import Registry
from ehr.settings import EhrSettings
from ehr.suggestions import CardActions
from ehr.user_fhir import UserFhir

NO_STORE = {"Cache-Control": "no-store"}
log = logging.getLogger("ehr.api")


class CdsWiring:
    """Adds the API and its error handlers to the app, and builds (on_start) and closes
    (on_stop) the engine and its peers in the app's lifespan.

    `transport` (tests) routes every outbound call of the EHR through one in-process transport.
    """

    def __init__(
        self, settings: EhrSettings, *, clock: Clock, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.transport = transport
        self._owned: list[httpx.AsyncClient] = []
        self._engine: CdsEngine | None = None

    def install(self, app: FastAPI) -> None:
        app.state.admin_token = self.settings.admin_secret()
        app.include_router(api_router())

        @app.exception_handler(Unauthenticated)
        async def unauthenticated(_request: Request, _exc: Unauthenticated) -> Response:
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})

        @app.exception_handler(ApiError)
        async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
            body = {"error": exc.code, "message": exc.message}
            return JSONResponse(body, status_code=exc.status, headers=NO_STORE)

        @app.exception_handler(Exception)
        async def unexpected(request: Request, exc: Exception) -> Response:
            # A bug: logged with its traceback (redacted) by the server; the caller gets no trace.
            log.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
            if not _is_api(request.url.path):
                return PlainTextResponse("Internal Server Error", status_code=500)
            body = {"error": "server_error", "message": "the EHR failed to handle this request; see its log"}
            return JSONResponse(body, status_code=500, headers=NO_STORE)

        @app.exception_handler(StarletteHTTPException)
        async def routing(request: Request, exc: StarletteHTTPException) -> Response:
            # No route or method under /api (e.g. `/api/hooks/`, `/api`) still answers in the API's shape.
            if not _is_api(request.url.path):
                return await http_exception_handler(request, exc)
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
            body = {"error": code, "message": str(exc.detail)}
            return JSONResponse(body, status_code=exc.status_code, headers={**NO_STORE, **(exc.headers or {})})

        @app.exception_handler(RequestValidationError)
        async def invalid(request: Request, exc: RequestValidationError) -> Response:
            if not _is_api(request.url.path):
                return await request_validation_exception_handler(request, exc)
            first = exc.errors()[0] if exc.errors() else {}
            where = ".".join(str(p) for p in first.get("loc", ())) or "request"
            message = f"{where}: {first.get('msg', 'invalid')}"
            return JSONResponse({"error": "invalid_request", "message": message}, status_code=400, headers=NO_STORE)

    def on_start(self, app: FastAPI, runtime: Runtime) -> None:
        settings = self.settings
        if self.transport is not None:
            http = httpx.AsyncClient(transport=self.transport, timeout=settings.http_timeout_seconds)
            service_http = httpx.AsyncClient(transport=self.transport, timeout=settings.cds_total_deadline_seconds)
            self._owned += [http, service_http]
        else:
            http = runtime.http
            # Discovery and feedback go to CDS Services: the same client rules as hook calls.
            service_http = make_http_client(ca_file=settings.ca_path, timeout=settings.http_timeout_seconds)
            self._owned.append(service_http)
        admin = AuthserverAdmin(http, settings.authserver_url, app.state.admin_token, clock=self.clock)
        engine = CdsEngine(
            settings,
            http=http,
            keys=runtime.signing_keys,
            clock=self.clock,
            smart_launch_urls=admin.smart_launch_urls,
            service_http=service_http if self.transport is not None else None,
        )
        self._engine = engine
        app.state.engine = engine
        app.state.authserver_admin = admin
        app.state.registry = Registry(
            runtime.sessions,
            service_http,
            engine.jwt,
            admin,
            check_template=check_template,
            supported_hooks=HOOKS,
            clock=self.clock,
            ca_file=settings.ca_path,
        )
        feedback = FeedbackSender(service_http, engine.jwt, ca_file=settings.ca_path)
        user_fhir = UserFhir(http, engine.tokens, fhir_base_url=settings.fhir_base_url)
        app.state.card_actions = CardActions(runtime.sessions, user_fhir, feedback, self.clock)

    async def on_stop(self, _app: FastAPI) -> None:
        if self._engine is not None:
            await self._engine.aclose()
            self._engine = None
        for client in self._owned:
            await client.aclose()
        self._owned.clear()


def _is_api(path: str) -> bool:
    """The EHR's API is `/api` and everything under it; its errors are JSON in its own shape."""
    return path == "/api" or path.startswith("/api/")
