"""Typed errors shared by every service.

Each carries the message a user sees; none carries a secret. Services map them onto their own
protocol (OAuth JSON, OperationOutcome, bare 401) in one exception handler per protocol.
"""

from __future__ import annotations


class MockEhrError(Exception):
    """Base of all errors raised on purpose by mockehr code."""


class ConfigError(MockEhrError):
    """A setting is missing, malformed or unsafe; the message is one line, fit for a terminal."""


class TokenInvalidError(MockEhrError):
    """A JWT failed verification.

    `reason` is for logs and tests only; protocol handlers never send it to the peer
    (a CDS Service answers a bare 401, the FHIR server `invalid_token` without detail).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyNotFoundError(MockEhrError):
    """No usable key: no active signing key for a service, or no key matches a token's kid."""


class KeyDecryptionError(MockEhrError):
    """A stored private key does not decrypt under the configured key-encryption key."""


class BodyRefusedError(MockEhrError):
    """A request body refused at the HTTP boundary, before a route, a dependency or an
    authentication check sees it (`common/middleware.py:BodyLimitMiddleware`). Each service
    renders it in its protocol's shape; `status` is the HTTP status."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BodyTooLargeError(BodyRefusedError):
    """Declared or streamed beyond the service's `max_body_bytes` (RFC 9110 §15.5.14)."""

    status = 413


class JsonTooDeepError(BodyRefusedError):
    """Nested deeper than the service's `max_json_depth`."""

    status = 400
