"""The properties every fuzzed response must have, whatever was sent.

- never a 5xx (an unhandled exception inside the app counts as one: ASGITransport re-raises it);
- never a Python traceback, source location or exception class name in the body;
- never a secret (admin token, client secret, KEK, private key material, the credential presented);
- an error has the protocol's shape: OperationOutcome on FHIR, the OAuth JSON error on the OAuth
  endpoints, `{"error", "message"}` on the EHR API, and a bare 401 where a guard refuses.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterable
from typing import Any

import httpx
from hypothesis import currently_in_test_context, event

# RFC 6749 §5.2, RFC 7009 §2.2.1, RFC 8693 §2.2.2, RFC 8707 §2, OpenID Connect Core §3.1.2.6.
OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "access_denied",
        "unsupported_token_type",
        "server_error",
        "temporarily_unavailable",
    }
)

_LIBRARY_EXCEPTIONS = (
    "OperationalError",
    "IntegrityError",
    "ProgrammingError",
    "DataError",
    "DBAPIError",
    "StatementError",
    "InterfaceError",
    "ValidationError",
    "JSONDecodeError",
    "DecodeError",
    "JoseError",
    "BadSignatureError",
    "InvalidSignature",
    "HTTPException",
    "RequestValidationError",
    "PostgresError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
)
_BUILTIN_EXCEPTIONS = tuple(
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
)
# Exception names in a response body are a leak of internals (and, usually, of an unhandled path).
_EXCEPTION_NAME = re.compile(r"\b(" + "|".join(sorted(set(_LIBRARY_EXCEPTIONS + _BUILTIN_EXCEPTIONS))) + r")\b")
_TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+")

Shape = Callable[[httpx.Response], None]


def fhir_shape(response: httpx.Response) -> None:
    """FHIR R4 §3.1.0.4 (http.html#summary): errors are OperationOutcome; the guard's 401 is bare."""
    if response.status_code < 400:
        return
    if response.status_code == 401:
        assert response.content == b"", response.text
        assert response.headers.get("www-authenticate", "").startswith("Bearer"), response.headers
        return
    assert response.headers.get("content-type", "").startswith("application/fhir+json"), response.headers
    body = response.json()
    assert body.get("resourceType") == "OperationOutcome", body
    assert body.get("issue"), body


def oauth_shape(response: httpx.Response) -> None:
    """RFC 6749 §5.2: a JSON object with a registered `error`; 401 names the scheme (§5.2, RFC 6750 §3)."""
    if response.status_code < 400:
        return
    body = response.json()
    assert body.get("error") in OAUTH_ERRORS, body
    assert set(body) <= {"error", "error_description", "error_uri"}, body
    if response.status_code == 401:
        assert "www-authenticate" in response.headers, response.headers


def bare_401_shape(response: httpx.Response) -> None:
    """Admin APIs and bearer guards refuse with an empty 401 (RFC 6750 §3)."""
    if response.status_code == 401:
        assert response.content == b"", response.text
        assert "www-authenticate" in response.headers, response.headers


def ehr_api_shape(response: httpx.Response) -> None:
    """The EHR API's errors: `{"error": code, "message": text}` (ehr/errors.py), or a bare 401."""
    if response.status_code < 400:
        return
    if response.status_code == 401:
        bare_401_shape(response)
        return
    body = response.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body


def any_shape(_response: httpx.Response) -> None:
    """HTML pages and redirects: only the generic properties apply."""


def check(response: httpx.Response, shape: Shape, secrets: Iterable[str], sent: str) -> None:
    where = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, f"{where} -> {response.status_code}: {response.text[:500]}"
    text = response.text
    assert not _TRACE.search(text), f"{where}: a traceback in the body: {text[:500]}"
    leaked = {m for m in _EXCEPTION_NAME.findall(text) if m not in sent}
    assert not leaked, f"{where}: exception names {leaked} in the body: {text[:500]}"
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items())
    for secret in secrets:
        if len(secret) >= 8:
            assert secret not in text, f"{where}: a secret in the body"
            assert secret not in headers, f"{where}: a secret in the headers"
    if response.request.method != "HEAD":  # a HEAD answer has no body to shape
        shape(response)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    shape: Shape,
    secrets: Iterable[str] = (),
    **kwargs: Any,
) -> httpx.Response:
    """Send one request in-process and assert the properties above on whatever comes back."""
    try:
        response = await client.request(method, url, **kwargs)
    except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
        raise  # the client refused to build the request: a strategy bug, not a server answer
    except Exception as exc:
        # Inside the app this is an unhandled exception: over the wire, a 500.
        raise AssertionError(f"{method} {url}: unhandled {type(exc).__name__} in the app (a 500): {exc}") from exc
    if currently_in_test_context():  # --hypothesis-show-statistics: how deep the fuzz reaches
        event(f"{method} -> {response.status_code}")
    check(response, shape, secrets, f"{url} {kwargs!r}")
    return response
