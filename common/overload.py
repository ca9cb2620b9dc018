"""Overload is answered 503 with Retry-After, never 500 (issue 18): one installer per service.

A request that waits past the pool timeout for a database connection, or whose statement is
stopped at the statement timeout (common/db.py), meets a busy server, not a broken one: the
client may retry, and says so in RFC 9110 §10.2.3's `Retry-After`. Each service shapes the
answer in its own protocol (`answer`); any other database error stays a logged 500.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from common.db import RETRY_AFTER_SECONDS, overload

Answer = Callable[[Request, str], Response]


def retry_later(response: Response) -> Response:
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def install_overload_handlers(app: FastAPI, answer: Answer) -> None:
    """`answer(request, reason)` builds the service's 503 body; Retry-After is added here."""

    async def overloaded(request: Request, exc: Exception) -> Response:
        reason = overload(exc)
        if reason is None:
            raise exc  # a real failure: Starlette's 500, with the traceback in the log
        return retry_later(answer(request, reason))

    app.add_exception_handler(PoolTimeoutError, overloaded)
    app.add_exception_handler(DBAPIError, overloaded)
