"""OAuth errors, each carrying its wire code and HTTP status (RFC 6749 §5.2, RFC 8693 §2.2.2,
RFC 8707 §2, RFC 7009 §2.2.1). One exception handler turns them into the JSON error response.

`description` is for the client developer; it never contains a secret, a token, or whether a
resource the caller may not see exists.
"""

from __future__ import annotations

# RFC 6749 §5.1: responses that carry tokens (and their errors, §5.2) are never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    error = "invalid_request"
    status = 400

    def __init__(self, description: str = "") -> None:
        super().__init__(description or self.error)
        self.description = description


class InvalidRequestError(OAuthError):
    error = "invalid_request"


class InvalidClientError(OAuthError):
    """Client authentication failed (RFC 6749 §5.2): 401 with WWW-Authenticate."""

    error = "invalid_client"
    status = 401


class InvalidGrantError(OAuthError):
    error = "invalid_grant"


class UnauthorizedClientError(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantTypeError(OAuthError):
    error = "unsupported_grant_type"


class InvalidScopeError(OAuthError):
    error = "invalid_scope"


class InvalidTargetError(OAuthError):
    """RFC 8707 §2: the requested resource is not one this server issues tokens for."""

    error = "invalid_target"


class AccessDeniedError(OAuthError):
    error = "access_denied"
    status = 403


class UnsupportedTokenTypeError(OAuthError):
    error = "unsupported_token_type"


class AdminUnauthorizedError(Exception):
    """The admin API's refusal: a bare 401 (admin.py), no OAuth body for strangers."""
