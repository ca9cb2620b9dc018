"""CDS Hooks 2.0 §Discovery: `GET {base}/cds-services` with the EHR's JWT, validated.

- The request carries the CDS Client JWT with `aud` = the discovery URL (CDS Hooks 2.0 "Trusting
  CDS Clients": the JWT is sent on every request, discovery included).
- https only; plain http only when the administrator opted in for this service, and then only
  to a loopback host (the JWT would otherwise travel in clear text).
- Network errors and 5xx are retried with exponential backoff (a fresh JWT each time); a 4xx is
  the service's considered answer and is not retried. Redirects are never followed: the JWT
  must not be sent on to another URL.
- The body is capped, parsed as JSON and validated: `services` is a list; each service has
  `hook`, `id` and `description` (title, prefetch, usageRequirements optional; 3.0 adds version
  and hookVersion). An `id` is a path segment of the service URL, so only URL-safe ids pass.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.http import check_outbound_url
from common.tls import client_ssl_context
from ehr.client_jwt import ClientJwtSigner
from ehr.errors import ApiError, validation_message

MAX_DISCOVERY_BYTES = 1024 * 1024
SERVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$"


class DiscoveryFailed(ApiError):
    status = 502
    code = "discovery_failed"


class DiscoveredService(BaseModel):
    """One entry of a discovery response (CDS Hooks 2.0 §Discovery response)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    hook: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    id: str = Field(pattern=SERVICE_ID_PATTERN)
    description: str = Field(max_length=10_000)
    title: str | None = Field(default=None, max_length=255)
    prefetch: dict[str, str] = Field(default_factory=dict)
    usageRequirements: str | None = Field(default=None, max_length=10_000)


class DiscoveryDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    services: list[DiscoveredService]


@dataclass(frozen=True)
class ClientCertificate:
    """Mutual TLS: the certificate (and key) the EHR presents to this service."""

    cert_file: Path
    key_file: Path


def mtls_context(ca_file: Path | None, cert: ClientCertificate) -> ssl.SSLContext:
    ctx = client_ssl_context(ca_file)
    try:
        ctx.load_cert_chain(certfile=str(cert.cert_file), keyfile=str(cert.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise DiscoveryFailed(f"cannot load the client certificate {cert.cert_file}: {type(exc).__name__}") from None
    return ctx


def check_discovery_url(url: str, *, allow_http_loopback: bool) -> str:
    try:
        check_outbound_url(url, allow_loopback_http=allow_http_loopback)
    except ValueError:
        hint = "" if allow_http_loopback else " (plain http needs the loopback-only opt-in)"
        raise DiscoveryFailed(f"the discovery URL must be https{hint}") from None
    if "?" in url or "#" in url:
        raise DiscoveryFailed("the discovery URL may not carry a query or a fragment")
    if "@" in urlsplit(url).netloc:
        # Credentials in the URL would be stored in the registry, shown by the API and put in
        # every JWT's aud; the CDS Client JWT is how the EHR authenticates.
        raise DiscoveryFailed("the discovery URL may not carry user information (user:password@)")
    return url.rstrip("/")


def parse_discovery(body: bytes) -> list[DiscoveredService]:
    try:
        document = DiscoveryDocument.model_validate_json(body)
    except ValidationError as exc:
        raise DiscoveryFailed(f"invalid discovery response at {validation_message(exc)}") from None
    return document.services


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_DISCOVERY_BYTES:
            raise DiscoveryFailed(f"the discovery response exceeds {MAX_DISCOVERY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _Retryable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def discover(
    http: httpx.AsyncClient,
    signer: ClientJwtSigner,
    url: str,
    *,
    allow_http_loopback: bool = False,
    attempts: int = 3,
    backoff_seconds: float = 0.25,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> list[DiscoveredService]:
    """The services listed at `url`, or DiscoveryFailed with the reason."""
    url = check_discovery_url(url, allow_http_loopback=allow_http_loopback)
    last = "no attempt"
    for attempt in range(attempts):
        if attempt:
            await sleep(backoff_seconds * 2 ** (attempt - 1))
        try:
            return await _attempt(http, signer, url)
        except _Retryable as retry:
            last = retry.reason
    raise DiscoveryFailed(f"discovery at {url} failed after {attempts} attempts: {last}")


async def _attempt(http: httpx.AsyncClient, signer: ClientJwtSigner, url: str) -> list[DiscoveredService]:
    headers = {"Accept": "application/json", **(await signer.authorization(url))}
    try:
        async with http.stream("GET", url, headers=headers) as response:
            if response.status_code >= 500:
                raise _Retryable(f"HTTP {response.status_code}")
            if 300 <= response.status_code < 400:
                raise DiscoveryFailed(f"discovery at {url} answered {response.status_code}: redirects are not followed")
            if response.status_code != 200:
                raise DiscoveryFailed(f"discovery at {url} answered HTTP {response.status_code}")
            body = await _read_capped(response)
    except httpx.TransportError as exc:
        raise _Retryable(type(exc).__name__) from None
    try:
        json.loads(body)
    except ValueError:
        raise DiscoveryFailed(f"discovery at {url} did not answer JSON") from None
    return parse_discovery(body)
