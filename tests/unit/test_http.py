"""common.http: outbound calls are https only (loopback http by explicit opt-in), no redirects, no proxies."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from common.http import check_outbound_url, is_loopback_host, make_http_client
from common.tls import ensure_ca


@pytest.mark.parametrize(
    "url",
    [
        "https://cds.example.org/cds-services",
        "https://cds.example.org:8443/cds-services?x=1",
        "https://localhost/x",
        "https://127.0.0.1:8443/",
        "https://[::1]:8443/",
        "HTTPS://cds.example.org/",
    ],
)
@pytest.mark.parametrize("allow_loopback_http", [False, True])
def test_check_outbound_url_accepts_https(url: str, allow_loopback_http: bool) -> None:
    assert check_outbound_url(url, allow_loopback_http=allow_loopback_http) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/cds-services",
        "http://localhost:8080/cds-services",
        "http://LOCALHOST:8080/",
        "http://127.0.0.1:8080/",
        "http://127.0.0.2/",
        "http://[::1]:8080/",
    ],
)
def test_check_outbound_url_accepts_loopback_http_only_when_allowed(url: str) -> None:
    assert check_outbound_url(url, allow_loopback_http=True) == url
    with pytest.raises(ValueError, match=r"^refusing non-https URL http://"):
        check_outbound_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://example.com/cds-services", "http://example.com"),
        ("http://10.0.0.1/", "http://10.0.0.1"),
        ("http://[fe80::1]/", "http://fe80::1"),
        ("http://localhost.example.com/", "http://localhost.example.com"),
        ("http://127.0.0.1.nip.io/", "http://127.0.0.1.nip.io"),
        ("http://localhost@example.com/", "http://example.com"),
        ("http://0.0.0.0/", "http://0.0.0.0"),
    ],
)
@pytest.mark.parametrize("allow_loopback_http", [False, True])
def test_check_outbound_url_refuses_http_to_a_non_loopback_host_even_with_the_flag(
    url: str, shown: str, allow_loopback_http: bool
) -> None:
    with pytest.raises(ValueError) as info:
        check_outbound_url(url, allow_loopback_http=allow_loopback_http)

    assert str(info.value) == f"refusing non-https URL {shown}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://localhost/file", "ftp://localhost"),
        ("ftp://example.com/file", "ftp://example.com"),
        ("file:///etc/passwd", "file://"),
        ("ws://localhost/", "ws://localhost"),
        ("javascript:alert(1)", "javascript://"),
        ("https:///path-only", "https://"),
        ("https://", "https://"),
        ("http:///x", "http://"),
        ("//example.com/x", "://example.com"),
        ("/relative/path", "://"),
        ("", "://"),
    ],
)
def test_check_outbound_url_refuses_other_schemes_and_urls_without_a_host(url: str, shown: str) -> None:
    with pytest.raises(ValueError) as info:
        check_outbound_url(url, allow_loopback_http=True)

    assert str(info.value) == f"refusing non-https URL {shown}"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.255.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("example.com", False),
        ("10.0.0.1", False),
        ("::", False),
        ("0.0.0.0", False),  # noqa: S104 - a host name under test, nothing binds
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_host(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


async def test_make_http_client_never_follows_redirects_and_ignores_proxy_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.attacker.example:3128")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nope.pem"))

    async with make_http_client(ca_file=ensure_ca(tmp_path).cert, timeout=7.0) as client:
        assert client.follow_redirects is False
        assert client.trust_env is False
        assert client.timeout == httpx.Timeout(7.0, connect=5.0)


async def test_make_http_client_returns_a_redirect_instead_of_following_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "https://attacker.example/steal"})

    async with make_http_client(ca_file=None) as client:
        client._transport = httpx.MockTransport(handler)  # no network: the transport answers
        response = await client.get("https://cds.example.org/cds-services", headers={"Authorization": "Bearer t"})

    assert response.status_code == 302
    assert response.next_request is not None
    assert str(response.request.url) == "https://cds.example.org/cds-services"
