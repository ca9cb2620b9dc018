"""The one way the stack makes outbound HTTP calls: httpx with timeouts, limits, verified TLS, no redirects."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from common.tls import client_ssl_context


def make_http_client(
    *,
    ca_file: Path | None,
    timeout: float = 10.0,
    max_connections: int = 100,
    max_keepalive: int = 20,
    base_url: str = "",
) -> httpx.AsyncClient:
    """An AsyncClient that verifies TLS against the system store + the dev CA and never follows redirects.

    `trust_env=False`: proxy variables in the environment must not silently reroute calls that
    carry bearer tokens.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        verify=client_ssl_context(ca_file),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive),
        follow_redirects=False,
        trust_env=False,
    )


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_outbound_url(url: str, *, allow_loopback_http: bool = False) -> str:
    """Refuse anything but https, except plain http to a loopback host when explicitly allowed."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and allow_loopback_http and is_loopback_host(parts.hostname):
        return url
    raise ValueError(f"refusing non-https URL {parts.scheme}://{parts.hostname or ''}")
