"""The minimal failing example of each class in known_open.KNOWN_OPEN, as found by the fuzzer.

Each is xfail(strict=False) while its class is listed; deleting the entry after the fixing branch
is merged turns it into an ordinary regression test (and widens the fuzz strategies again).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mockehr import migrate
from tests.fuzz.invariants import fhir_shape, oauth_shape, send
from tests.fuzz.known_open import known_open
from tests.integration.authharness import Harness, running_authserver
from tests.integration.fhirharness import FhirHarness, fhir_harness


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'test.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
async def fhir(tmp_path: Path, sqlite_url: str) -> AsyncIterator[FhirHarness]:
    async with fhir_harness(tmp_path, sqlite_url, patients=1) as h:
        yield h


@pytest.fixture
async def auth(tmp_path: Path, sqlite_url: str) -> AsyncIterator[Harness]:
    async with running_authserver(tmp_path, sqlite_url) as h:
        yield h


@known_open("numbers-out-of-range")
async def test_a_huge_revocation_cursor_is_a_client_error(auth: Harness) -> None:
    await send(auth.client, "GET", "/revocations", params={"after": "9" * 20}, shape=oauth_shape)


@known_open("numbers-out-of-range")
async def test_a_huge_version_id_is_a_client_error(fhir: FhirHarness) -> None:
    token = await fhir.token("system/*.rs")
    path = f"/fhir/Patient/{fhir.patient_of(0)}/_history/{'9' * 20}"
    await send(fhir.client, "GET", path, shape=fhir_shape, headers={"Authorization": f"Bearer {token}"})


@known_open("deep-json")
async def test_a_deeply_nested_launch_body_is_a_client_error(auth: Harness) -> None:
    body = '{"patient": ' + "[" * 100_000 + "]" * 100_000 + "}"
    await send(auth.client, "POST", "/launch", shape=oauth_shape, content=body.encode())


@known_open("trailing-slash-redirect")
async def test_no_redirect_points_at_the_host_the_request_named(fhir: FhirHarness) -> None:
    token = await fhir.token("system/*.rs")
    headers = {"Authorization": f"Bearer {token}", "Host": "evil.example"}
    response = await send(fhir.client, "GET", "/fhir/Patient/", shape=fhir_shape, headers=headers)
    assert "evil.example" not in response.headers.get("location", ""), response.headers
