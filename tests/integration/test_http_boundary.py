"""The HTTP boundary of every service: bodies are bounded before anything authenticates or parses
them, and no answer is built from the Host header (docs/security.md, "The HTTP boundary")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from authserver.models import LaunchRow
from examples.cds_service.app import create_app as create_cds
from examples.cds_service.settings import CdsSettings
from examples.smart_app.app import create_app as create_smart
from examples.smart_app.settings import SmartAppSettings
from mockehr import migrate
from tests.integration.apps import serving
from tests.integration.ehrharness import CDS, EhrHarness, ehr_harness
from tests.integration.fhirharness import AUTH, FHIR

SMART = "https://smart.test"
EVIL = "evil.example"
MIB = 1024 * 1024
DEEP = b"[" * 1100 + b"]" * 1100  # the 1,100-deep body


@dataclass
class Stack:
    """Every service in-process: the EHR harness (authserver, FHIR server, EHR), the example CDS
    Service and the example SMART app."""

    h: EhrHarness
    auth: httpx.AsyncClient
    cds: httpx.AsyncClient
    smart: httpx.AsyncClient

    def client(self, service: str) -> httpx.AsyncClient:
        return {
            "auth": self.auth,
            "fhir": self.h.fhir.client,
            "ehr": self.h.ehr,
            "cds": self.cds,
            "smart": self.smart,
        }[service]

    async def launches(self) -> int:
        async with self.h.fhir.auth_app.state.runtime.sessions() as session:
            return int((await session.execute(select(func.count()).select_from(LaunchRow))).scalar_one())

    async def registered(self) -> list[str]:
        admin = {"Authorization": f"Bearer {self.h.admin_token}"}
        return [c["client_id"] for c in (await self.auth.get("/admin/clients", headers=admin)).json()]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    # The boundary is the same on both backends; SQLite alone keeps this file quick.
    url = f"sqlite:///{tmp_path / 'boundary.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
async def stack(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Stack]:
    database_url = sqlite_url
    async with AsyncExitStack() as exits, ehr_harness(tmp_path, database_url) as h:
        transport = httpx.ASGITransport(app=h.fhir.auth_app)
        auth = await exits.enter_async_context(httpx.AsyncClient(transport=transport, base_url=AUTH))
        cds_settings = CdsSettings(data_dir=tmp_path, public_url=CDS, ehr_issuer="https://ehr.test")
        cds = await exits.enter_async_context(serving(create_cds(cds_settings), CDS))
        smart_settings = SmartAppSettings(data_dir=tmp_path, public_url=SMART, fhir_base_url=FHIR)
        smart = await exits.enter_async_context(serving(create_smart(smart_settings), SMART))
        yield Stack(h, auth, cds, smart)


# (service, method, path, the body limit, the shape of its refusals)
ROUTES = [
    ("auth", "POST", "/launch", MIB, "oauth"),
    ("auth", "PUT", "/admin/clients/x", MIB, "oauth"),
    ("auth", "POST", "/token", MIB, "oauth"),
    ("auth", "POST", "/login", MIB, "text"),
    ("fhir", "POST", "/fhir/Patient", 10 * MIB, "fhir"),
    ("ehr", "POST", "/api/hooks/patient-view", 2 * MIB, "api"),
    ("ehr", "POST", "/ui/orders", 2 * MIB, "api"),
    ("cds", "POST", "/cds-services/patient-greeting", 5 * MIB, "api"),
    ("smart", "GET", "/launch", MIB, "text"),
]


def _check_shape(response: httpx.Response, shape: str, status: int, message: str) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    if shape == "oauth":
        assert response.json() == {"error": "invalid_request", "error_description": message}
        assert response.headers["cache-control"] == "no-store"
    elif shape == "fhir":
        assert response.headers["content-type"].startswith("application/fhir+json")
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "too-costly"
        assert outcome["issue"][0]["diagnostics"] == message
    elif shape == "api":
        code = "too_large" if status == 413 else "invalid_request"
        assert response.json() == {"error": code, "message": message}
    else:
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text == message


async def _chunks(total: int) -> AsyncIterator[bytes]:
    # No Content-Length: the limit must hold while the body streams in.
    sent = 0
    while sent < total:
        yield b"x" * 65536
        sent += 65536


async def test_an_oversized_body_without_credentials_is_refused_before_authentication(stack: Stack) -> None:
    for service, method, path, limit, shape in ROUTES:
        client = stack.client(service)
        message = f"the body is larger than {limit} bytes"
        declared = await client.request(method, path, content=b"{}", headers={"Content-Length": str(limit + 1)})
        _check_shape(declared, shape, 413, message)
        streamed = await client.request(method, path, content=_chunks(limit + 65536))
        _check_shape(streamed, shape, 413, message)
    # Refused, not half-done: nothing was registered, launched or called.
    assert await stack.launches() == 0
    assert "x" not in await stack.registered()
    assert stack.h.cds.calls("/cds-services/greeting") == []


async def test_a_deeply_nested_body_is_refused_with_400_not_a_server_error(stack: Stack) -> None:
    message = "the JSON body nests deeper than 64 levels"
    for service, method, path, _limit, shape in ROUTES:
        if service == "smart":
            continue  # takes no JSON
        headers = {"Content-Type": "application/json"}
        response = await stack.client(service).request(method, path, content=DEEP, headers=headers)
        _check_shape(response, shape, 400, message)
    # Without a Content-Type FastAPI would parse a body as JSON: it is measured all the same.
    bare = await stack.auth.put("/admin/clients/x", content=DEEP)
    _check_shape(bare, "oauth", 400, message)


async def test_a_strangers_malformed_registration_gets_the_bare_401_not_the_parsers_findings(stack: Stack) -> None:
    response = await stack.auth.put(
        "/admin/clients/x", content=b'{"client_id": ', headers={"Content-Type": "application/json"}
    )

    assert (response.status_code, response.content) == (401, b"")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_the_admin_gets_400_for_a_registration_that_is_not_json(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {stack.h.admin_token}", "Content-Type": "application/json"}
    response = await stack.auth.put("/admin/clients/x", content=b'{"client_id": ', headers=admin)

    assert response.status_code == 400
    assert response.json() == {"error": "invalid_request", "error_description": "the body must be a JSON object"}


# (service, method, path): variants of real routes, with a trailing slash
SLASHED = [
    ("fhir", "GET", "/fhir/Patient/x/"),
    ("fhir", "GET", "/fhir/metadata/"),
    ("fhir", "POST", "/fhir/Patient/"),
    ("ehr", "POST", "/api/hooks/patient-view/"),
    ("ehr", "GET", "/patients/"),
    ("auth", "POST", "/token/"),
    ("auth", "GET", "/.well-known/openid-configuration/"),
    ("cds", "GET", "/cds-services/"),
    ("smart", "GET", "/launch/"),
]


async def test_a_path_with_a_trailing_slash_is_not_redirected_to_the_host_header(stack: Stack) -> None:
    for service, method, path in SLASHED:
        response = await stack.client(service).request(method, path, json={}, headers={"Host": EVIL})
        # Not found: no redirect (a 307 would also make the client resend its body).
        assert response.status_code == 404, (service, path, response.status_code, response.headers)
        assert EVIL not in str(response.headers).lower() and EVIL not in response.text, (service, path)


async def test_the_links_of_a_search_bundle_name_the_configured_base_not_the_host_header(stack: Stack) -> None:
    token = await stack.h.fhir.token("system/*.rs")
    response = await stack.h.fhir.client.get(
        "/fhir/Patient", params={"_count": "1"}, headers={"Authorization": f"Bearer {token}", "Host": EVIL}
    )

    assert response.status_code == 200
    links = {link["relation"]: link["url"] for link in response.json()["link"]}
    assert links["self"].startswith(f"{FHIR}/Patient") and links["next"].startswith(f"{FHIR}/Patient?")
    assert EVIL not in str(response.headers).lower() and EVIL not in response.text
