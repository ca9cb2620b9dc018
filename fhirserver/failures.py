"""How the FHIR server answers each kind of failure: an OperationOutcome, but for the bare 401.

RFC 6750 §3: a request without a valid token gets `WWW-Authenticate: Bearer error="invalid_token"`
and no body; everything else is a FHIR OperationOutcome (http.html#2.21.0.4), never a traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.db import is_statement_timeout, overload
from common.errors import BodyRefusedError
from common.overload import retry_later
from fhirserver import rest
from fhirserver.errors import FhirError, Issue, operation_outcome
from fhirserver.guard import ForbiddenError, UnauthorizedError, UnavailableError

__all__ = ["install_failure_handlers"]

_log = logging.getLogger(__name__)


def _outcome(status: int, code: str, diagnostics: str) -> Response:
    return rest.fhir_response(operation_outcome([Issue(diagnostics, code=code)]), status)


async def fhir_error(_r: Request, exc: FhirError) -> Response:
    return rest.fhir_response(exc.outcome(), exc.status)


async def body_refused(_r: Request, exc: BodyRefusedError) -> Response:
    return _outcome(exc.status, "too-costly", exc.message)


async def unauthorized(_r: Request, _e: UnauthorizedError) -> Response:
    return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def forbidden(_r: Request, _e: ForbiddenError) -> Response:
    return _outcome(403, "forbidden", "the token's scopes do not allow this interaction")


async def unavailable(_r: Request, _e: UnavailableError) -> Response:
    return retry_later(_outcome(503, "transient", "authorization state is temporarily unavailable; retry"))


async def pool_exhausted(_r: Request, exc: PoolTimeoutError) -> Response:
    # No connection free within MOCKEHR_FHIR_DB_POOL_TIMEOUT_SECONDS: overload, not failure.
    return retry_later(_outcome(503, "transient", overload(exc) or "the server is busy; retry"))


async def database_error(_r: Request, exc: DBAPIError) -> Response:
    if is_statement_timeout(exc):
        # The statement ran past MOCKEHR_FHIR_DB_STATEMENT_TIMEOUT_SECONDS and was stopped.
        outcome = _outcome(503, "too-costly", "the request took too long and was stopped; narrow it or retry later")
        return retry_later(outcome)
    _log.error("database error: %s", type(exc.orig).__name__)
    return _outcome(500, "exception", "the request failed")


async def invalid(_r: Request, _e: RequestValidationError) -> Response:
    return _outcome(400, "invalid", "the request is malformed")


async def http_error(_r: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 404:
        return _outcome(404, "not-found", "no such endpoint")
    if exc.status_code == 405:
        return _outcome(405, "not-supported", "method not allowed here")
    return _outcome(exc.status_code, "processing", "request failed")


def install_failure_handlers(app: FastAPI) -> None:
    """One handler per failure kind (FastAPI's decorator, applied here: handlers stay importable)."""
    app.exception_handler(FhirError)(fhir_error)
    app.exception_handler(BodyRefusedError)(body_refused)
    app.exception_handler(UnauthorizedError)(unauthorized)
    app.exception_handler(ForbiddenError)(forbidden)
    app.exception_handler(UnavailableError)(unavailable)
    app.exception_handler(PoolTimeoutError)(pool_exhausted)
    app.exception_handler(DBAPIError)(database_error)
    app.exception_handler(RequestValidationError)(invalid)
    app.exception_handler(StarletteHTTPException)(http_error)
