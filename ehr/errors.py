"""Errors of the EHR's JSON API, each carrying its HTTP status and wire code.

One exception handler (app.py) turns them into `{"error": code, "message": ...}`. A message is
for the developer or administrator at the other end: it never carries a token, a JWT or a
secret. Authentication failures are a bare 401 instead (`Unauthenticated`).
"""

from __future__ import annotations

from pydantic import ValidationError

from common.errors import MockEhrError


def validation_message(exc: ValidationError) -> str:
    """`where: what` for the first error (`body` when it is the whole document)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def validation_reason(exc: ValidationError) -> str:
    """The first error as `where: what`, without pydantic's "Value error, " prefix."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class Unauthenticated(MockEhrError):
    """No valid admin token or UI session: answered as a bare 401 with WWW-Authenticate."""


class ApiError(MockEhrError):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class UpstreamFailed(ApiError):
    """A peer (a CDS Service, the authorization server, the FHIR server) failed or refused."""

    status = 502
    code = "upstream_error"
