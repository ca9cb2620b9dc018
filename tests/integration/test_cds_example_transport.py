"""How the example CDS Service can be reached: CORS for exactly the configured browser origins,
and mutual TLS (a real uvicorn TLS server; clients with and without a certificate)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from common.clock import FrozenClock
from common.jose import new_jti, sign_jwt
from common.keys import SigningKey
from common.tls import CertPaths, client_ssl_context, ensure_server_certificate, issue_certificate
from examples.cds_service.app import create_app as create_cds
from examples.cds_service.serve import uvicorn_ssl_options
from examples.cds_service.settings import CdsSettings
from tests.integration.apps import serving
from tests.integration.test_cds_example import CDS, EHR, HOOK_BODY, JWKS_URL, _jwks, _key

BROWSER_EHR = "https://browser-ehr.test"


def _token(key: SigningKey, aud: str) -> str:
    now = int(time.time())
    return sign_jwt({"iss": EHR, "aud": aud, "iat": now, "exp": now + 300, "jti": new_jti()}, key, typ="JWT")


def _jwks_client(key: SigningKey) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda _r: httpx.Response(200, json=_jwks(key))))


# --- CORS -------------------------------------------------------------------------------------


@asynccontextmanager
async def _cds(tmp_path: Path, key: SigningKey, origins: list[str]) -> AsyncIterator[httpx.AsyncClient]:
    settings = CdsSettings(
        data_dir=tmp_path, public_url=CDS, ehr_issuer=EHR, ehr_jwks_url=JWKS_URL, cors_origins=origins
    )
    async with _jwks_client(key) as outbound:
        app = create_cds(settings, clock=FrozenClock(time.time()), http_client=outbound)
        async with serving(app, CDS) as client:
            yield client


def _preflight(method: str, origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, x-other",
    }


async def test_a_configured_origin_gets_a_preflight_without_a_token_and_cors_on_the_answer(tmp_path: Path) -> None:
    key = _key("ehr-1")
    async with _cds(tmp_path, key, [BROWSER_EHR]) as client:
        url = f"{CDS}/cds-services/patient-greeting"
        preflight = await client.options(url, headers=_preflight("POST", BROWSER_EHR))
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == BROWSER_EHR
        assert preflight.headers["access-control-allow-methods"] == "POST"
        assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
        assert "access-control-allow-credentials" not in preflight.headers
        discovery = await client.options("/cds-services", headers=_preflight("GET", BROWSER_EHR))
        assert discovery.headers["access-control-allow-methods"] == "GET"
        headers = {"Origin": BROWSER_EHR, "Authorization": f"Bearer {_token(key, url)}"}
        response = await client.post(url, json=HOOK_BODY, headers=headers)
        assert response.status_code == 200 and response.json()["cards"]
        assert response.headers["access-control-allow-origin"] == BROWSER_EHR
        assert "origin" in response.headers["vary"].lower()
        # A browser can read the bare 401 too (and still learns nothing from it).
        refused = await client.post(url, json=HOOK_BODY, headers={"Origin": BROWSER_EHR})
        assert refused.status_code == 401 and refused.content == b""
        assert refused.headers["access-control-allow-origin"] == BROWSER_EHR


@pytest.mark.parametrize(
    "origin",
    ["https://evil.test", "null", f"{BROWSER_EHR}.evil.test", "http://browser-ehr.test", f"{BROWSER_EHR}:8443"],
)
async def test_any_other_origin_gets_no_cors_header(tmp_path: Path, origin: str) -> None:
    key = _key("ehr-1")
    async with _cds(tmp_path, key, [BROWSER_EHR]) as client:
        url = f"{CDS}/cds-services/patient-greeting"
        preflight = await client.options(url, headers=_preflight("POST", origin))
        assert preflight.status_code != 204
        assert not any(h.startswith("access-control-") for h in preflight.headers)
        headers = {"Origin": origin, "Authorization": f"Bearer {_token(key, url)}"}
        response = await client.post(url, json=HOOK_BODY, headers=headers)
        assert response.status_code == 200  # not a browser: CORS does not authorize, the JWT does
        assert not any(h.startswith("access-control-") for h in response.headers)


async def test_without_configured_origins_there_is_no_cors_at_all(tmp_path: Path) -> None:
    async with _cds(tmp_path, _key("ehr-1"), []) as client:
        preflight = await client.options("/cds-services", headers=_preflight("GET", BROWSER_EHR))
        assert not any(h.startswith("access-control-") for h in preflight.headers)


def test_a_wildcard_or_a_path_is_not_an_origin(tmp_path: Path) -> None:
    for bad in ("*", "https://browser-ehr.test/", "browser-ehr.test"):
        with pytest.raises(ValueError, match="origin"):
            CdsSettings(data_dir=tmp_path, cors_origins=[bad])


# --- mutual TLS ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def _tls_server(settings: CdsSettings, key: SigningKey) -> AsyncIterator[str]:
    async with _jwks_client(key) as outbound:
        app = create_cds(settings, http_client=outbound)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
            lifespan="on",
            **uvicorn_ssl_options(settings),
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            for _ in range(500):
                if server.started or task.done():
                    break
                await asyncio.sleep(0.01)
            assert server.started, "uvicorn did not start"
            yield settings.base_url
        finally:
            server.should_exit = True
            await task


def _certs(tmp_path: Path) -> dict[str, CertPaths]:
    def issue(data_dir: Path, name: str, hosts: list[str]) -> CertPaths:
        return issue_certificate(data_dir, hosts, CertPaths(tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"))

    return {
        "server": issue(tmp_path, "server", ["localhost", "127.0.0.1"]),
        "client": issue(tmp_path, "client", ["ehr"]),
        "stranger": issue(tmp_path / "other-ca", "stranger", ["ehr"]),  # another CA's certificate
    }


def _context(tmp_path: Path, cert: CertPaths | None) -> ssl.SSLContext:
    ctx = client_ssl_context(tmp_path / "ca.pem")
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def _settings(tmp_path: Path, certs: dict[str, CertPaths], **overrides: Any) -> CdsSettings:
    port = _free_port()
    return CdsSettings(
        data_dir=tmp_path,
        port=port,
        public_url=f"https://localhost:{port}",
        tls_cert_file=certs["server"].cert,
        tls_key_file=certs["server"].key,
        ehr_issuer=EHR,
        ehr_jwks_url=JWKS_URL,
        **overrides,
    )


async def _discover(base: str, ctx: ssl.SSLContext, key: SigningKey) -> httpx.Response:
    url = f"{base}/cds-services"
    async with httpx.AsyncClient(verify=ctx, trust_env=False, timeout=5) as client:
        return await client.get(url, headers={"Authorization": f"Bearer {_token(key, url)}"})


async def test_with_mutual_tls_only_a_client_with_a_certificate_from_the_ca_gets_through(tmp_path: Path) -> None:
    certs, key = _certs(tmp_path), _key("ehr-1")
    settings = _settings(tmp_path, certs, client_cert_required=True)
    async with _tls_server(settings, key) as base:
        response = await _discover(base, _context(tmp_path, certs["client"]), key)
        assert response.status_code == 200 and response.json()["services"]
        for refused in (None, certs["stranger"]):
            with pytest.raises(httpx.TransportError):
                await _discover(base, _context(tmp_path, refused), key)


async def test_without_mutual_tls_a_client_needs_no_certificate(tmp_path: Path) -> None:
    certs, key = _certs(tmp_path), _key("ehr-1")
    async with _tls_server(_settings(tmp_path, certs), key) as base:
        assert (await _discover(base, _context(tmp_path, None), key)).status_code == 200


def test_mutual_tls_takes_the_client_ca_and_requires_tls(tmp_path: Path) -> None:
    settings = CdsSettings(data_dir=tmp_path, client_cert_required=True, client_ca_file=tmp_path / "clients.pem")
    options = uvicorn_ssl_options(settings)
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED and options["ssl_ca_certs"] == str(tmp_path / "clients.pem")
    assert "ssl_cert_reqs" not in uvicorn_ssl_options(CdsSettings(data_dir=tmp_path))
    with pytest.raises(ValueError, match="needs tls"):
        CdsSettings(data_dir=tmp_path, client_cert_required=True, tls=False)


def _healthz(url: str, ctx: ssl.SSLContext) -> int | None:
    try:
        return httpx.get(url, verify=ctx, timeout=2, trust_env=False).status_code
    except httpx.TransportError:
        return None


def test_mockehr_up_starts_the_service_with_mutual_tls_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mockehr.stack import Stack
    from mockehr.supervisor import start, stop
    from tests.e2e.conftest import free_base_port

    ensure_server_certificate(tmp_path)
    monkeypatch.setenv("MOCKEHR_CDS_CLIENT_CERT_REQUIRED", "true")
    stack = Stack(data_dir=tmp_path, base_port=free_base_port())
    running = start(stack, ["cds-example"])
    try:
        url = f"{stack.base_url('cds-example')}/healthz"
        with_cert = _context(tmp_path, CertPaths(tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server-key.pem"))
        deadline = time.monotonic() + 30
        while _healthz(url, with_cert) != 200:
            assert running[0].process.poll() is None and time.monotonic() < deadline, running[0].log_path.read_text()
            time.sleep(0.1)
        assert _healthz(url, _context(tmp_path, None)) is None  # refused in the handshake
    finally:
        stop(running)
