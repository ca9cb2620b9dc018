"""How refusals reach the wire: OAuth JSON (RFC 6749 §5.2) for programs, text for the browser's
pages, a bare 401 for the admin API."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from authserver.errors import NO_STORE, AdminUnauthorizedError, OAuthError
from common.errors import BodyRefusedError
from common.overload import install_overload_handlers

# The pages a browser posts forms to (login.py, authorize.py); every other route is for programs.
BROWSER_PAGES = frozenset({"/login", "/logout", "/authorize", "/authorize/select"})


async def admin_unauthorized(_request: Request, _exc: AdminUnauthorizedError) -> Response:
    return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def oauth_error(_request: Request, exc: OAuthError) -> Response:
    body = {"error": exc.error}
    if exc.description:
        body["error_description"] = exc.description
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
    return JSONResponse(body, status_code=exc.status, headers=headers)


async def body_refused(request: Request, exc: BodyRefusedError) -> Response:
    # The browser's pages get text; every endpoint a program calls (token, introspection,
    # revocation, launch registration, admin) the OAuth error shape (RFC 6749 §5.2).
    if request.url.path in BROWSER_PAGES:
        return PlainTextResponse(exc.message, status_code=exc.status, headers=dict(NO_STORE))
    body = {"error": "invalid_request", "error_description": exc.message}
    return JSONResponse(body, status_code=exc.status, headers=dict(NO_STORE))


def overloaded(request: Request, reason: str) -> Response:
    if request.url.path in BROWSER_PAGES:
        return PlainTextResponse(reason, status_code=503, headers=dict(NO_STORE))
    # RFC 6749 §4.1.2.1 names this error for a server that is "temporarily overloaded".
    body = {"error": "temporarily_unavailable", "error_description": reason}
    return JSONResponse(body, status_code=503, headers=dict(NO_STORE))


def install(app: FastAPI) -> None:
    app.exception_handler(AdminUnauthorizedError)(admin_unauthorized)
    app.exception_handler(OAuthError)(oauth_error)
    app.exception_handler(BodyRefusedError)(body_refused)
    install_overload_handlers(app, overloaded)
