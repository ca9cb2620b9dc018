"""Failing examples the fuzzer found, fixed on this branch, kept as plain regression tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.authharness import Harness, running_authserver
from tests.integration.ehrharness import EhrHarness, ehr_harness
from tests.integration.fhirharness import FhirHarness, fhir_harness


@pytest.fixture
async def fhir(tmp_path: Path, database_url: str) -> AsyncIterator[FhirHarness]:
    async with fhir_harness(tmp_path, database_url, patients=1) as h:
        yield h


async def test_a_bundle_whose_entry_is_not_a_list_is_refused_with_an_operation_outcome(fhir: FhirHarness) -> None:
    token = await fhir.token("system/*.cruds")
    for entry in (True, 5, "abc", {"request": {"method": "GET", "url": "Patient"}}):
        for kind in ("batch", "transaction"):
            response = await fhir.client.post(
                "/fhir",
                json={"resourceType": "Bundle", "type": kind, "entry": entry},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 400, (entry, kind, response.text)
            assert response.json()["resourceType"] == "OperationOutcome"
            assert "Bundle.entry must be a list" in response.text


@pytest.fixture
async def auth(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    async with running_authserver(tmp_path, database_url) as h:
        yield h


@pytest.mark.parametrize("path", ["/authorize/select", "/login", "/logout"])
async def test_a_non_ascii_csrf_token_is_refused_like_any_wrong_one(auth: Harness, path: str) -> None:
    auth.client.cookies.set("__Host-mockehr-csrf", "c" * 43)
    try:
        response = await auth.client.post(path, data={"csrf": "\x80", "username": "dr.a", "password": "x"})
    finally:
        auth.client.cookies.clear()
    assert response.status_code == 403, response.text
    assert "Traceback" not in response.text


@pytest.fixture
async def ehr(tmp_path: Path, database_url: str) -> AsyncIterator[EhrHarness]:
    async with ehr_harness(tmp_path, database_url) as h:
        yield h


async def test_an_unknown_api_route_answers_in_the_api_error_shape(ehr: EhrHarness) -> None:
    response = await ehr.ehr.post("/api/hooks/", json={}, headers=ehr.admin)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "Not Found"}
    response = await ehr.ehr.delete("/api/exchanges", headers=ehr.admin)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    # Found by the fuzz in CI: `/api/exchanges/..` is normalised to `/api` by the client.
    response = await ehr.ehr.get("/api", headers=ehr.admin)
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "Not Found"}


async def test_a_non_ascii_sign_in_state_is_refused_like_any_wrong_one(ehr: EhrHarness) -> None:
    started = await ehr.ehr.get("/login")  # sets the sealed sign-in cookie the callback compares against
    assert started.status_code in (302, 303), started.text
    response = await ehr.ehr.get("/oauth/callback", params={"state": "\x80", "code": "c"})
    assert response.status_code == 400, response.text
