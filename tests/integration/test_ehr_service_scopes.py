"""Least privilege per CDS Service (CDS Hooks 2.0 §Security: "the scopes the CDS Service needs
for its logic and no more"): each service's per-call token carries its own approved scope, never
a sibling's; registrations without prefetch; removing a registration."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from authserver import clients
from ehr.models import CdsExchangeRow, CdsServiceRow
from tests.integration.ehrharness import CdsDouble, EhrHarness, card, ehr_harness

CONDITIONS = {
    "hook": "patient-view",
    "id": "conditions",
    "description": "Reads the problem list",
    "prefetch": {"conditions": "Condition?patient={{context.patientId}}"},
}
VITALS = {
    "hook": "patient-view",
    "id": "vitals",
    "description": "Reads observations",
    "prefetch": {"observations": "Observation?patient={{context.patientId}}"},
}
NO_PREFETCH = {"hook": "patient-view", "id": "fetcher", "description": "Reads FHIR itself, announces no prefetch"}


def reads_observations(h_ref: list[EhrHarness], seen: dict[str, Any], name: str) -> Any:
    """A service that, during its exchange, reads Observations with its fhirAuthorization token."""

    async def answer(body: dict[str, Any]) -> Response:
        auth = body.get("fhirAuthorization") or {}
        patient = body["context"]["patientId"]
        response = await h_ref[0].fhir.get("Observation", auth.get("access_token"), patient=patient)
        found = response.json() if response.content else None
        seen[name] = {"scope": auth.get("scope"), "status": response.status_code, "body": found}
        return JSONResponse({"cards": [card(f"card-{name}")]})

    return answer


async def _rows(h: EhrHarness) -> dict[str, CdsServiceRow]:
    async with h.ehr_app.state.runtime.sessions() as session:
        return {r.id: r for r in (await session.execute(select(CdsServiceRow))).scalars()}


async def _client(h: EhrHarness, client_id: str) -> Any:
    async with h.fhir.auth_app.state.runtime.sessions() as session:
        return await clients.get(session, client_id)


@pytest.fixture
async def two(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[EhrHarness, dict[str, Any]]]:
    seen: dict[str, Any] = {}
    ref: list[EhrHarness] = []
    cds = CdsDouble(
        services=[CONDITIONS, VITALS],
        answers={name: reads_observations(ref, seen, name) for name in ("conditions", "vitals")},
    )
    async with ehr_harness(tmp_path, database_url, cds) as harness:
        ref.append(harness)
        yield harness, seen


async def test_a_service_approved_only_for_conditions_cannot_read_observations_during_its_exchange(
    two: tuple[EhrHarness, dict[str, Any]],
) -> None:
    h, seen = two
    added = await h.add_service(approveAllPrefetch=True)
    assert added.status_code == 201, added.text
    # One provider, one OAuth client: its ceiling is the union of its services' scopes.
    client = await _client(h, "cds-double")
    assert set(client.scope.split()) == {"patient/Condition.rs", "patient/Observation.rs"}
    assert {k: r.scope for k, r in (await _rows(h)).items()} == {
        "conditions": "patient/Condition.rs",
        "vitals": "patient/Observation.rs",
    }

    fired = await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0))
    assert fired.status_code == 200, fired.text
    assert seen["conditions"]["scope"] == "patient/Condition.rs"
    assert "Observation" not in seen["conditions"]["scope"]
    assert seen["conditions"]["status"] == 403
    assert seen["conditions"]["body"]["resourceType"] == "OperationOutcome"
    # Its sibling, approved for Observations, reads them with its own token.
    assert seen["vitals"]["scope"] == "patient/Observation.rs"
    assert (seen["vitals"]["status"], seen["vitals"]["body"]["resourceType"]) == (200, "Bundle")
    (sent,) = h.cds.calls("/cds-services/conditions")
    assert set(sent.body["prefetch"]) == {"conditions"}
    async with h.ehr_app.state.runtime.sessions() as session:
        logged = {r.service_id: r.token_scope for r in (await session.execute(select(CdsExchangeRow))).scalars()}
    assert logged == {"conditions": "patient/Condition.rs", "vitals": "patient/Observation.rs"}


async def test_a_scope_approved_for_one_service_is_never_given_to_its_sibling(
    two: tuple[EhrHarness, dict[str, Any]],
) -> None:
    h, seen = two
    added = await h.add_service(
        prefetch=["conditions"], serviceScopes={"vitals": ["patient/Observation.rs", "patient/Patient.rs"]}
    )
    assert added.status_code == 201, added.text
    assert {k: r.scope for k, r in (await _rows(h)).items()} == {
        "conditions": "patient/Condition.rs",
        "vitals": "patient/Observation.rs patient/Patient.rs",
    }
    await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0))
    assert (seen["conditions"]["status"], seen["vitals"]["status"]) == (403, 200)
    unknown = await h.add_service(approveAllPrefetch=True, serviceScopes={"nobody": ["patient/Patient.rs"]})
    assert unknown.status_code == 400
    assert unknown.json()["message"].startswith("scope for 'nobody'")


async def test_a_discovery_without_prefetch_registers_and_its_service_gets_no_token_until_a_scope_is_approved(
    tmp_path: Path, database_url: str
) -> None:
    seen: dict[str, Any] = {}
    ref: list[EhrHarness] = []
    cds = CdsDouble(services=[NO_PREFETCH], answers={"fetcher": reads_observations(ref, seen, "fetcher")})
    async with ehr_harness(tmp_path, database_url, cds) as h:
        ref.append(h)
        added = await h.add_service(approveAllPrefetch=True)
        assert added.status_code == 201, added.text
        assert added.json()["services"][0]["scope"] == ""
        # A client with an empty ceiling: the token exchange can grant it nothing.
        assert (await _client(h, "cds-double")).scope == ""

        fired = await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0))
        assert fired.status_code == 200, fired.text
        (sent,) = h.cds.calls("/cds-services/fetcher")
        assert "fhirAuthorization" not in sent.body and "fhirServer" not in sent.body
        assert seen["fetcher"]["status"] == 401
        exchange = (await h.ehr.get(f"/api/exchanges/{fired.json()['hookInstance']}", headers=h.admin)).json()
        assert (
            "no scope approved for this service: sent without fhirAuthorization or prefetch"
            in (exchange["services"][0]["notes"])
        )

        scope = {"scope": ["patient/Observation.rs"]}
        patched = await h.ehr.patch("/api/services/fetcher", json=scope, headers=h.admin)
        assert patched.status_code == 200, patched.text
        await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0))
        assert (seen["fetcher"]["scope"], seen["fetcher"]["status"]) == ("patient/Observation.rs", 200)


async def test_removing_a_service_frees_its_id_keeps_its_log_and_shrinks_the_providers_client(
    two: tuple[EhrHarness, dict[str, Any]],
) -> None:
    h, _seen = two
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0))

    removed = await h.ehr.delete("/api/services/vitals", headers=h.admin)
    assert removed.status_code == 200, removed.text
    assert removed.json()["removed"]["id"] == "vitals"
    assert set(await _rows(h)) == {"conditions"}
    client = await _client(h, "cds-double")
    assert (client.scope, client.active) == ("patient/Condition.rs", True)
    async with h.ehr_app.state.runtime.sessions() as session:
        logged = sorted(r.service_id for r in (await session.execute(select(CdsExchangeRow))).scalars())
    assert logged == ["conditions", "vitals"]  # the exchange log is kept
    again = await h.ehr.delete("/api/services/vitals", headers=h.admin)
    assert again.status_code == 404 and again.json()["message"] == "no CDS Service 'vitals'"

    # The last service of the provider gone: its client is disabled at the authorization server.
    assert (await h.ehr.delete("/api/services/conditions", headers=h.admin)).status_code == 200
    assert (await _client(h, "cds-double")).active is False

    # Registering again reuses the ids and re-enables the client.
    readded = await h.add_service(approveAllPrefetch=True)
    assert readded.status_code == 201, readded.text
    assert sorted(s["id"] for s in readded.json()["services"]) == ["conditions", "vitals"]
    assert (await _client(h, "cds-double")).active is True


async def test_only_an_administrator_may_remove_a_service(two: tuple[EhrHarness, dict[str, Any]]) -> None:
    h, _seen = two
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    assert (await h.ehr.delete("/api/services/vitals")).status_code == 401
    assert (await h.ehr.delete("/api/services/vitals", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert set(await _rows(h)) == {"conditions", "vitals"}
