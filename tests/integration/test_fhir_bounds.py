"""Every number and every search is bounded: hostile inputs get a 400 in the protocol's error
shape (an OperationOutcome from the FHIR server, an OAuth JSON error from the authorization
server), never a 500; a statement that runs too long is stopped and answered 503 `too-costly`.

Each attack is mounted through the in-process services on a real database of each backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest

from tests.integration.fhirharness import AUTH, FhirHarness, fhir_harness

HUGE = "999999999999999999999"  # past 64 bits


@pytest.fixture
def fhir_patients() -> int:
    return 1


async def _system(fhir: FhirHarness) -> dict[str, str]:
    return {"Authorization": f"Bearer {await fhir.token('system/*.cruds')}"}


def _outcome(response: httpx.Response, status: int, code: str) -> str:
    """The diagnostics of a protocol-shaped FHIR error."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code, body
    diagnostics: str = body["issue"][0]["diagnostics"]
    return diagnostics


async def _observation(fhir: FhirHarness, headers: dict[str, str]) -> str:
    patient = fhir.data.practitioners[0].patient_ids[0]
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "bounded"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    created = await fhir.client.post("/fhir/Observation", json=body, headers=headers)
    assert created.status_code == 201
    oid: str = created.json()["id"]
    return oid


# --- numbers ------------------------------------------------------------------------------------------


async def test_the_revocation_feed_refuses_numbers_out_of_range_with_an_oauth_error(fhir: FhirHarness) -> None:
    transport = httpx.ASGITransport(app=fhir.auth_app)
    async with httpx.AsyncClient(transport=transport, base_url=AUTH) as auth:
        for params in (
            {"after": HUGE},
            {"after": "-1"},
            {"after": "²"},
            {"after": "1" * 5000},
            {"limit": "0"},
            {"limit": "5001"},
            {"limit": HUGE},
            {"limit": "ten"},
        ):
            response = await auth.get("/revocations", params=params)
            assert response.status_code == 400, (params, response.text)
            assert response.json()["error"] == "invalid_request"
            assert next(iter(params)) in response.json()["error_description"]
        fine = await auth.get("/revocations", params={"after": str(2**31 - 1), "limit": "5000"})
        assert fine.status_code == 200
        assert fine.json() == {"revocations": [], "last": 2**31 - 1}


@pytest.mark.parametrize("vid", [HUGE, "2147483648", "0", "-1", "²", "1.0", "1" * 5000])
async def test_a_version_id_out_of_range_is_a_400_operation_outcome(fhir: FhirHarness, vid: str) -> None:
    headers = await _system(fhir)
    oid = await _observation(fhir, headers)
    response = await fhir.client.get(f"/fhir/Observation/{oid}/_history/{vid}", headers=headers)
    assert "version id" in _outcome(response, 400, "invalid")
    assert (await fhir.client.get(f"/fhir/Observation/{oid}/_history/1", headers=headers)).status_code == 200
    missing = await fhir.client.get(f"/fhir/Observation/{oid}/_history/{2**31 - 1}", headers=headers)
    _outcome(missing, 404, "not-found")


@pytest.mark.parametrize("count", [HUGE + "9" * 10, "²", "-1", "1" * 5000])
async def test_a_count_that_is_not_a_bounded_integer_is_a_400(fhir: FhirHarness, count: str) -> None:
    response = await fhir.client.get("/fhir/Observation", params={"_count": count}, headers=await _system(fhir))
    assert "_count" in _outcome(response, 400, "invalid")


async def test_a_large_count_is_lowered_to_the_page_maximum(fhir: FhirHarness) -> None:
    response = await fhir.client.get("/fhir/Observation", params={"_count": "9" * 18}, headers=await _system(fhir))
    assert response.status_code == 200
    assert response.json()["resourceType"] == "Bundle"


@pytest.mark.parametrize("rid", ["a,b", "x" * 65, "a b", "%C2%B2"])
async def test_a_read_of_something_that_is_not_an_id_finds_nothing(fhir: FhirHarness, rid: str) -> None:
    headers = await _system(fhir)
    written = await fhir.client.put(
        "/fhir/Observation/a",
        json={"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "a"}},
        headers=headers,
    )
    assert written.status_code == 201
    response = await fhir.client.get(f"/fhir/Observation/{rid}", headers=headers)
    _outcome(response, 404, "not-found")


async def test_a_forged_or_oversized_paging_cursor_is_a_400(fhir: FhirHarness) -> None:
    headers = await _system(fhir)
    for value in ("x" * 20_000, "a.b.c", "é.é", HUGE):
        response = await fhir.client.get("/fhir/Observation", params={"_cursor": value}, headers=headers)
        _outcome(response, 400, "invalid")


# --- search complexity ----------------------------------------------------------------------------------


def _values(n: int) -> str:
    return ",".join(f"code-{i}" for i in range(n))


@pytest.mark.parametrize(
    ("params", "limit"),
    [
        ([("code", _values(1000))], "at most 100 values in one parameter (limit MOCKEHR_FHIR_SEARCH_MAX_VALUES)"),
        ([("_id", _values(101))], "MOCKEHR_FHIR_SEARCH_MAX_VALUES"),
        ([("_sort", ",".join(["date"] * 101))], "MOCKEHR_FHIR_SEARCH_MAX_VALUES"),
        ([("code", f"c{i}") for i in range(1000)], "at most 40 parameters (limit MOCKEHR_FHIR_SEARCH_MAX_PARAMETERS)"),
        ([("subject:Patient.organization.partof.name", "x")], "MOCKEHR_FHIR_SEARCH_MAX_CHAIN_DEPTH"),
        (
            [("_has:Observation:patient:_has:Observation:patient:_has:Observation:patient:code", "x")],
            "at most 2 chained or _has links (limit MOCKEHR_FHIR_SEARCH_MAX_CHAIN_DEPTH)",
        ),
        ([("_include", "Observation:subject")] * 11, "at most 10 _include/_revinclude"),
    ],
    ids=["1000-or-values", "101-ids", "101-sort-keys", "1000-parameters", "chain-of-3", "has-of-3", "11-includes"],
)
async def test_a_search_past_a_complexity_limit_is_a_400_naming_the_limit(
    fhir: FhirHarness, params: list[tuple[str, str]], limit: str
) -> None:
    rtype = "Patient" if params[0][0].startswith("_has") else "Observation"
    headers = await _system(fhir)
    response = await fhir.client.get(f"/fhir/{rtype}", params=tuple(params), headers=headers)
    assert limit in _outcome(response, 400, "too-costly")
    form = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    posted = await fhir.client.post(f"/fhir/{rtype}/_search", content=urlencode(params), headers=form)
    assert limit in _outcome(posted, 400, "too-costly")


async def test_searches_within_the_limits_still_answer(fhir: FhirHarness) -> None:
    headers = await _system(fhir)
    patient = fhir.data.practitioners[0].patient_ids[0]
    for rtype, params in [
        ("Observation", [("code", _values(100))]),
        ("Observation", [("code", f"c{i}") for i in range(39)] + [("_count", "1")]),
        ("Observation", [("subject:Patient.general-practitioner.name", "x")]),
        ("Patient", [("_has:Observation:patient:_has:Observation:patient:code", "x")]),
        ("Observation", [("_include", "Observation:subject")] * 10 + [("patient", patient)]),
    ]:
        response = await fhir.client.get(f"/fhir/{rtype}", params=tuple(params), headers=headers)
        assert response.status_code == 200, (params, response.text)


async def test_the_limits_are_settings(tmp_path: Path, database_url: str) -> None:
    async with fhir_harness(
        tmp_path, database_url, patients=1, search_max_values=3, search_max_parameters=2, search_max_includes=0
    ) as fhir:
        headers = await _system(fhir)
        for params, limit in [
            ({"code": "a,b,c,d"}, "at most 3 values"),
            ({"code": "a", "status": "final", "date": "2020"}, "at most 2 parameters"),
            ({"_include": "Observation:subject"}, "at most 0 _include"),
        ]:
            response = await fhir.client.get("/fhir/Observation", params=params, headers=headers)
            assert limit in _outcome(response, 400, "too-costly")


# --- time ----------------------------------------------------------------------------------------------


async def test_a_statement_past_the_timeout_is_stopped_and_answered_503(tmp_path: Path, database_url: str) -> None:
    """A search blocked behind a table lock can never finish by itself: only the statement
    timeout ends it (PostgreSQL's own statement_timeout: the backend stops too)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a reader cannot be blocked on SQLite (WAL); tests/integration/test_db_bounds.py covers it")
    async with fhir_harness(tmp_path, database_url, patients=1, db_statement_timeout_seconds=0.5) as fhir:
        headers = await _system(fhir)
        locker: Any = await asyncpg.connect(database_url.replace("postgresql://", "postgres://", 1))
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE fhir_resources IN ACCESS EXCLUSIVE MODE")
                response = await fhir.client.get("/fhir/Observation", params={"code": "x"}, headers=headers)
                assert "took too long" in _outcome(response, 503, "too-costly")
                waiting = await locker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                )
                assert waiting == 0
        finally:
            await locker.close()
        after = await fhir.client.get("/fhir/Observation", params={"code": "x"}, headers=headers)
        assert after.status_code == 200
