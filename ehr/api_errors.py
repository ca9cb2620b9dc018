"""How the EHR answers errors: the API (`/api/...`, and the UI's script endpoints for refused
bodies) in its JSON shape `{"error": code, "message": ...}`, pages as text; never a trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import BodyRefusedError
from common.overload import install_overload_handlers
from ehr.errors import ApiError, Unauthenticated

NO_STORE = {"Cache-Control": "no-store"}
log = logging.getLogger("ehr.api")


def _is_api(path: str) -> bool:
    """The EHR's API is `/api` and everything under it; its errors are JSON in its own shape."""
    return path == "/api" or path.startswith("/api/")


async def unauthenticated(_request: Request, _exc: Unauthenticated) -> Response:
    return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def api_error(_request: Request, exc: ApiError) -> Response:
    body = {"error": exc.code, "message": exc.message}
    return JSONResponse(body, status_code=exc.status, headers=NO_STORE)


async def unexpected(request: Request, exc: Exception) -> Response:
    # A bug: logged with its traceback (redacted) by the server; the caller gets no trace.
    log.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    if not _is_api(request.url.path):
        return PlainTextResponse("Internal Server Error", status_code=500)
    body = {"error": "server_error", "message": "the EHR failed to handle this request; see its log"}
    return JSONResponse(body, status_code=500, headers=NO_STORE)


async def routing(request: Request, exc: StarletteHTTPException) -> Response:
    # No route or method under /api (e.g. `/api/hooks/`, `/api`) still answers in the API's shape.
    if not _is_api(request.url.path):
        return await http_exception_handler(request, exc)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    body = {"error": code, "message": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers={**NO_STORE, **(exc.headers or {})})


async def invalid(request: Request, exc: RequestValidationError) -> Response:
    if not _is_api(request.url.path):
        return await request_validation_exception_handler(request, exc)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ())) or "request"
    message = f"{where}: {first.get('msg', 'invalid')}"
    return JSONResponse({"error": "invalid_request", "message": message}, status_code=400, headers=NO_STORE)


async def body_refused(request: Request, exc: BodyRefusedError) -> Response:
    # The JSON API (and the UI's script endpoints) get the API's error shape; pages get text.
    if request.url.path.startswith(("/api/", "/ui/")):
        code = "too_large" if exc.status == 413 else "invalid_request"
        body = {"error": code, "message": exc.message}
        return JSONResponse(body, status_code=exc.status, headers=NO_STORE)
    return PlainTextResponse(exc.message, status_code=exc.status)


def overloaded(request: Request, reason: str) -> Response:
    if request.url.path.startswith(("/api/", "/ui/")):
        body = {"error": "unavailable", "message": reason}
        return JSONResponse(body, status_code=503, headers=NO_STORE)
    return PlainTextResponse(reason, status_code=503, headers=NO_STORE)


def install_error_handlers(app: FastAPI) -> None:
    # The decorator form: Starlette types a handler as taking any Exception.
    handlers = (
        (Unauthenticated, unauthenticated),
        (ApiError, api_error),
        (Exception, unexpected),
        (StarletteHTTPException, routing),
        (RequestValidationError, invalid),
        (BodyRefusedError, body_refused),
    )
    for exc_class, handler in handlers:
        app.exception_handler(exc_class)(handler)
    install_overload_handlers(app, overloaded)
