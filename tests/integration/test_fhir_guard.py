"""The FHIR server's guard: no token can read, search or write beyond its user, service and patient."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from authserver import tokens
from authserver.models import IssuedTokenRow
from fhirserver.models import ResourceRow
from fhirserver.state import fhir_state
from tests.integration.fhirharness import FHIR, FhirHarness

SYSTEM = "system/*.cruds"


def _ids(bundle: dict[str, Any], rtype: str | None = None) -> set[str]:
    return {
        e["resource"]["id"] for e in bundle.get("entry", []) if rtype is None or e["resource"]["resourceType"] == rtype
    }


def _patients_in(bundle: dict[str, Any]) -> set[str]:
    found = set()
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            found.add(resource["id"])
        for key in ("subject", "patient"):
            ref = resource.get(key, {}).get("reference", "") if isinstance(resource.get(key), dict) else ""
            if ref.startswith("Patient/"):
                found.add(ref.split("/")[1])
    return found


async def _one(fhir: FhirHarness, rtype: str, patient: str) -> str:
    token = await fhir.token(SYSTEM)
    bundle = (await fhir.get(rtype, token, patient=patient, _count=1)).json()
    return str(bundle["entry"][0]["resource"]["id"])


def _assert_bare_401(response: Any) -> None:
    assert response.status_code == 401
    assert response.content == b""
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


# --- authentication ----------------------------------------------------------------------------


async def test_without_a_token_only_metadata_and_smart_configuration_answer(fhir: FhirHarness) -> None:
    assert (await fhir.client.get("/fhir/metadata")).status_code == 200
    assert (await fhir.client.get("/fhir/.well-known/smart-configuration")).status_code == 200
    for path in (
        "Patient",
        f"Patient/{fhir.patient_of(0)}",
        "Observation?code=8867-4",
        f"Patient/{fhir.patient_of(0)}/$everything",
    ):
        _assert_bare_401(await fhir.get(path, None))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"aud": "https://other.test/fhir"}, id="token-for-another-resource-server"),
        pytest.param({"aud": f"{FHIR}/"}, id="aud-with-a-trailing-slash"),
        pytest.param({"typ": "JWT"}, id="a-cds-hooks-jwt-or-id-token-typ"),
        pytest.param({"lifetime": -120}, id="expired"),
    ],
)
async def test_a_token_that_is_not_a_live_access_token_for_this_server_is_refused(
    fhir: FhirHarness, kwargs: dict[str, Any]
) -> None:
    token = await fhir.token(SYSTEM, **kwargs)
    _assert_bare_401(await fhir.get("Patient", token))


async def test_a_token_accepted_before_is_refused_once_it_expires(fhir: FhirHarness) -> None:
    token = await fhir.token(SYSTEM, lifetime=60)
    assert (await fhir.get("Patient", token)).status_code == 200
    assert (await fhir.get("Patient", token)).status_code == 200  # now answered from the verified-token cache
    fhir.clock.advance(60 + 31)  # past exp and the 30 s leeway
    _assert_bare_401(await fhir.get("Patient", token))


async def test_a_revoked_token_is_refused_as_soon_as_the_feed_is_polled(fhir: FhirHarness) -> None:
    token = await fhir.token(SYSTEM, record=True)
    assert (await fhir.get("Patient", token)).status_code == 200
    runtime = fhir.auth_app.state.runtime
    async with runtime.sessions() as session, session.begin():
        row = (await session.execute(select(IssuedTokenRow))).scalars().one()
        await tokens.revoke(session, [row], int(fhir.clock()))
    await fhir_state(fhir.fhir_app).revocations.poll_once()  # what the watcher does every 0.5 s
    _assert_bare_401(await fhir.get("Patient", token))


async def test_the_guard_fails_closed_when_the_revocation_view_is_stale(fhir: FhirHarness) -> None:
    token = await fhir.token(SYSTEM)
    await fhir_state(fhir.fhir_app).revocations.stop()  # the feed is no longer read …
    fhir.clock.advance(5)  # … for longer than the staleness limit
    response = await fhir.get("Patient", await fhir.token(SYSTEM))
    assert response.status_code == 503
    assert response.json()["issue"][0]["code"] == "transient"
    assert token


# --- scopes ------------------------------------------------------------------------------------


async def test_an_observation_scope_cannot_read_conditions_or_write_observations(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    token = await fhir.token("patient/Observation.rs", patient=patient)
    assert (await fhir.get("Observation", token, patient=patient)).status_code == 200
    condition = await fhir.get("Condition", token, patient=patient)
    assert condition.status_code == 403 and condition.json()["issue"][0]["code"] == "forbidden"
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    created = await fhir.client.post(
        "/fhir/Observation",
        json=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert created.status_code == 403


async def test_a_granular_category_scope_never_returns_another_category(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    token = await fhir.token("patient/Observation.rs?category=laboratory", patient=patient)
    bundle = (await fhir.get("Observation", token, patient=patient, _count=200)).json()
    categories = {c["code"] for e in bundle["entry"] for cat in e["resource"]["category"] for c in cat["coding"]}
    assert categories == {"laboratory"}
    vitals = (await fhir.get("Observation", token, patient=patient, category="vital-signs")).json()
    assert vitals.get("total") == 0
    vital_id = next(
        e["resource"]["id"]
        for e in (
            await fhir.get("Observation", await fhir.token(SYSTEM), patient=patient, category="vital-signs")
        ).json()["entry"]
    )
    assert (await fhir.get(f"Observation/{vital_id}", token)).status_code == 404


async def test_system_scopes_do_nothing_in_a_user_bound_token(fhir: FhirHarness) -> None:
    token = await fhir.token("system/Patient.rs", user=fhir.practitioner(0))
    assert (await fhir.get("Patient", token)).status_code == 403


# --- another patient, every way of asking -------------------------------------------------------


async def test_another_patients_resources_are_invisible_every_way_one_might_ask(fhir: FhirHarness) -> None:
    mine, theirs = fhir.patient_of(0), fhir.patient_of(1)
    token = await fhir.token("patient/*.rs", patient=mine)
    their_obs = await _one(fhir, "Observation", theirs)

    by_id = await fhir.get(f"Patient/{theirs}", token)
    missing = await fhir.get("Patient/does-not-exist", token)
    assert by_id.status_code == missing.status_code == 404
    assert by_id.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"] == "not-found"
    assert (await fhir.get(f"Observation/{their_obs}", token)).status_code == 404
    assert (await fhir.get(f"Observation/{their_obs}/_history", token)).status_code == 404
    assert (await fhir.get(f"Observation/{their_obs}/_history/1", token)).status_code == 404
    assert (await fhir.get(f"Patient/{theirs}/$everything", token)).status_code == 404
    for params in (
        {"patient": theirs},
        {"subject": f"Patient/{theirs}"},
        {"subject": f"{FHIR}/Patient/{theirs}"},
        {"_id": their_obs},
        {"subject:Patient._id": theirs},
        {"_has:Observation:patient:_id": their_obs},
    ):
        rtype = "Patient" if any(k.startswith("_has") for k in params) else "Observation"
        bundle = (await fhir.get(rtype, token, **params)).json()
        assert bundle.get("total", 0) == 0 and "entry" not in bundle, params
    included = (await fhir.get("Observation", token, _include="Observation:subject", _count=200)).json()
    assert _patients_in(included) == {mine}
    revincluded = (await fhir.get("Patient", token, _revinclude="Observation:subject", _count=200)).json()
    assert _patients_in(revincluded) == {mine}


async def test_a_batch_entry_cannot_reach_another_patient(fhir: FhirHarness) -> None:
    mine, theirs = fhir.patient_of(0), fhir.patient_of(1)
    token = await fhir.token("patient/*.rs", patient=mine)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{mine}"}},
            {"request": {"method": "GET", "url": f"Patient/{theirs}"}},
            {"request": {"method": "GET", "url": f"Observation?patient={theirs}"}},
        ],
    }
    response = await fhir.client.post(
        "/fhir", json=bundle, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    )
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200", "404", "200"]
    assert response.json()["entry"][2]["resource"].get("total") == 0


async def _count(fhir: FhirHarness, rtype: str) -> int:
    async with fhir.fhir_app.state.runtime.sessions() as session:
        return int(
            (
                await session.execute(
                    select(func.count()).select_from(ResourceRow).where(ResourceRow.resource_type == rtype)
                )
            ).scalar_one()
        )


async def test_a_transaction_cannot_move_an_observation_to_another_patient(fhir: FhirHarness) -> None:
    mine, theirs = fhir.patient_of(0), fhir.patient_of(1)
    token = await fhir.token("patient/*.cruds", patient=mine)
    obs_id = await _one(fhir, "Observation", mine)
    current = (await fhir.get(f"Observation/{obs_id}", token)).json()
    moved = dict(current, subject={"reference": f"Patient/{theirs}"})
    before = await _count(fhir, "Observation")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "new"},
                    "subject": {"reference": f"Patient/{mine}"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"resource": moved, "request": {"method": "PUT", "url": f"Observation/{obs_id}"}},
        ],
    }
    response = await fhir.client.post(
        "/fhir", json=bundle, headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    )
    assert response.status_code == 403
    assert await _count(fhir, "Observation") == before
    again = (await fhir.get(f"Observation/{obs_id}", token)).json()
    assert (
        again["subject"] == {"reference": f"Patient/{mine}"}
        and again["meta"]["versionId"] == current["meta"]["versionId"]
    )


async def test_an_update_cannot_move_a_resource_out_of_the_compartment(fhir: FhirHarness) -> None:
    mine, theirs = fhir.patient_of(0), fhir.patient_of(1)
    token = await fhir.token("patient/*.cruds", patient=mine)
    obs_id = await _one(fhir, "Observation", mine)
    current = (await fhir.get(f"Observation/{obs_id}", token)).json()
    response = await fhir.client.put(
        f"/fhir/Observation/{obs_id}",
        json=dict(current, subject={"reference": f"Patient/{theirs}"}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 403
    assert (await fhir.get(f"Observation/{obs_id}", token)).json()["subject"] == {"reference": f"Patient/{mine}"}


async def test_if_none_exist_never_reveals_another_patients_resource(fhir: FhirHarness) -> None:
    mine, theirs = fhir.patient_of(0), fhir.patient_of(1)
    system = await fhir.token(SYSTEM)
    their_obs = (await fhir.get(f"Observation/{await _one(fhir, 'Observation', theirs)}", system)).json()
    identifier = their_obs["identifier"][0]
    token = await fhir.token("patient/*.cruds", patient=mine)
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{mine}"},
        "identifier": [identifier],
    }
    response = await fhir.client.post(
        "/fhir/Observation",
        json=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/fhir+json",
            "If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}",
        },
    )
    assert response.status_code == 201
    assert response.json()["id"] != their_obs["id"]


async def test_a_paging_link_replayed_with_another_token_is_refused(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    first = await fhir.token("patient/Observation.rs", patient=patient)
    page = (await fhir.get("Observation", first, patient=patient, _count=2)).json()
    next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert (
        await fhir.client.get(next_url.removeprefix("https://fhir.test"), headers={"Authorization": f"Bearer {first}"})
    ).status_code == 200
    other = await fhir.token("patient/Observation.rs", patient=fhir.patient_of(1))
    replayed = await fhir.client.get(
        next_url.removeprefix("https://fhir.test"), headers={"Authorization": f"Bearer {other}"}
    )
    assert replayed.status_code == 400


# --- user/ scopes: the practitioner's panel -----------------------------------------------------


async def test_a_practitioner_sees_the_panel_and_careteam_patients_and_nobody_else(fhir: FhirHarness) -> None:
    practitioner = fhir.data.practitioners[1]
    token = await fhir.token("user/Patient.rs", user=f"Practitioner/{practitioner.id}")
    bundle = (await fhir.get("Patient", token, _count=200)).json()
    expected = set(practitioner.patient_ids) | set(fhir.data.careteam_member_patients.get(practitioner.id, ()))
    assert _ids(bundle) == expected
    outside = next(p for p in fhir.data.patient_ids if p not in expected)
    assert (await fhir.get(f"Patient/{outside}", token)).status_code == 404


# --- audit -------------------------------------------------------------------------------------


async def test_every_request_with_a_cds_service_token_is_audited(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    user = fhir.practitioner(0)
    token = await fhir.token("patient/Observation.rs", patient=patient, user=user, client_id="cds-example", act="ehr")
    assert (await fhir.get("Observation", token, patient=patient)).status_code == 200
    assert (await fhir.get("Condition", token, patient=patient)).status_code == 403
    await fhir_state(fhir.fhir_app).audit.flush()
    events = (await fhir.get("AuditEvent", await fhir.token(SYSTEM), _count=50)).json()["entry"]
    records = [e["resource"] for e in events]
    assert len(records) == 2
    for event in records:
        agents = {a["who"].get("identifier", {}).get("value") or a["who"].get("reference") for a in event["agent"]}
        assert agents == {"cds-example", user}
        assert event["entity"][0]["what"]["reference"] == f"Patient/{patient}"
    assert sorted(e["outcome"] for e in records) == ["0", "4"]
    # A request without the EHR acting for a service is not audited here.
    assert json.dumps(records).count("search-type") == 2


async def test_no_token_can_write_change_or_delete_audit_events(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    cds = await fhir.token(
        "patient/Observation.rs", patient=patient, user=fhir.practitioner(0), client_id="cds-example", act="ehr"
    )
    await fhir.get("Observation", cds, patient=patient)
    await fhir_state(fhir.fhir_app).audit.flush()
    system = await fhir.token(SYSTEM)
    event = (await fhir.get("AuditEvent", system)).json()["entry"][0]["resource"]
    for token in (await fhir.token("patient/*.cruds", patient=patient), system):
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        assert (await fhir.client.delete(f"/fhir/AuditEvent/{event['id']}", headers=headers)).status_code == 403
        assert (
            await fhir.client.put(f"/fhir/AuditEvent/{event['id']}", json=dict(event, outcome="0"), headers=headers)
        ).status_code == 403
        created = await fhir.client.post("/fhir/AuditEvent", json=dict(event, id=None), headers=headers)
        assert created.status_code == 403
    assert (await fhir.get(f"AuditEvent/{event['id']}", system)).json()["meta"]["versionId"] == event["meta"][
        "versionId"
    ]
