"""Errors of the example CDS Service, each carrying its HTTP status (the 401 is auth.Unauthorized)."""

from __future__ import annotations


class CdsError(Exception):
    """Answered as `{"error": code, "message": message}` with `status`; never carries a secret."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(CdsError):
    """The body is not a request this service can read (malformed, wrong hook, bad context)."""


class TooLarge(CdsError):
    status = 413
    code = "too_large"


class DataUnavailable(CdsError):
    """The service lacks data it needs (CDS Hooks 2.0 §HTTP Response: 412 Precondition Failed)."""

    status = 412
    code = "precondition_failed"

    @property
    def reason(self) -> str:
        return self.message
