"""How the example service answers errors: `{"error": code, "message": ...}` with the error's
status (errors.py), a bare 401 for an unauthenticated caller, never a trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from common.errors import BodyRefusedError
from examples.cds_service.auth import Unauthorized
from examples.cds_service.errors import BadRequest, CdsError, DataUnavailable, TooLarge

log = logging.getLogger(__name__)


async def unauthorized(_request: Request, _exc: Unauthorized) -> Response:
    # Bare 401: no body, no reason (CDS Hooks security: never tell an attacker what failed).
    return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def body_refused(_request: Request, exc: BodyRefusedError) -> Response:
    refusal = TooLarge(exc.message) if exc.status == 413 else BadRequest(exc.message)
    return JSONResponse({"error": refusal.code, "message": refusal.message}, status_code=refusal.status)


async def cds_error(request: Request, exc: CdsError) -> Response:
    if isinstance(exc, DataUnavailable):
        log.info("%s: 412 (%s)", request.url.path, exc.reason)
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)


def install_error_handlers(app: FastAPI) -> None:
    # The decorator form: Starlette types a handler as taking any Exception.
    app.exception_handler(Unauthorized)(unauthorized)
    app.exception_handler(BodyRefusedError)(body_refused)
    app.exception_handler(CdsError)(cds_error)
