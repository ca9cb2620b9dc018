"""Granular scopes bind writes too (SMART App Launch 2.2, "Finer-grained resource constraints using
search parameters"): a create, update or delete whose resource, before or after the change, lies
outside the filters of the scopes granting that interaction is refused with 403 and changes
nothing, alone, in a batch entry and in a transaction."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from fhirserver.models import ResourceRow, ResourceVersionRow
from tests.integration.fhirharness import FhirHarness

SYSTEM = "system/*.cruds"
CATEGORIES = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB_ONLY = f"patient/Observation.cruds?category={CATEGORIES}|laboratory"


@pytest.fixture
def fhir_patients() -> int:
    return 3


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


def _category(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": CATEGORIES, "code": code}]}]


def _observation(patient: str, category: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if category is not None:
        body["category"] = _category(category)
    return body


async def _stored(fhir: FhirHarness, patient: str, category: str) -> dict[str, Any]:
    """One of the patient's seeded Observations of `category`, as stored."""
    token = await fhir.token(SYSTEM)
    bundle = (await fhir.get("Observation", token, patient=patient, category=f"{CATEGORIES}|{category}")).json()
    resource: dict[str, Any] = bundle["entry"][0]["resource"]
    return resource


async def _current(fhir: FhirHarness, rid: str) -> dict[str, Any]:
    response = await fhir.get(f"Observation/{rid}", await fhir.token(SYSTEM))
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def _counts(fhir: FhirHarness) -> tuple[int, int]:
    """(current Observations, Observation versions) in the database."""
    async with fhir.fhir_app.state.runtime.sessions() as session:
        current = await session.execute(
            select(func.count()).select_from(ResourceRow).where(ResourceRow.resource_type == "Observation")
        )
        versions = await session.execute(
            select(func.count())
            .select_from(ResourceVersionRow)
            .where(ResourceVersionRow.resource_type == "Observation")
        )
        return int(current.scalar_one()), int(versions.scalar_one())


def _assert_forbidden(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "forbidden"


# --- single requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("category", ["vital-signs", None], ids=["vital-signs", "no-category"])
async def test_an_observation_outside_a_laboratory_only_scope_cannot_be_created(
    fhir: FhirHarness, category: str | None
) -> None:
    patient = fhir.patient_of(0)
    token = await fhir.token(LAB_ONLY, patient=patient)
    before = await _counts(fhir)
    response = await fhir.client.post(
        "/fhir/Observation", json=_observation(patient, category), headers=_headers(token)
    )
    _assert_forbidden(response)
    assert await _counts(fhir) == before


async def test_a_laboratory_observation_cannot_be_updated_into_vital_signs(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    lab = await _stored(fhir, patient, "laboratory")
    token = await fhir.token(LAB_ONLY, patient=patient)
    before = await _counts(fhir)
    response = await fhir.client.put(
        f"/fhir/Observation/{lab['id']}", json=dict(lab, category=_category("vital-signs")), headers=_headers(token)
    )
    _assert_forbidden(response)
    assert await _counts(fhir) == before
    assert await _current(fhir, lab["id"]) == lab


async def test_a_vital_signs_observation_cannot_be_rewritten_as_laboratory_by_a_laboratory_only_scope(
    fhir: FhirHarness,
) -> None:
    patient = fhir.patient_of(0)
    vital = await _stored(fhir, patient, "vital-signs")
    token = await fhir.token(LAB_ONLY, patient=patient)
    before = await _counts(fhir)
    response = await fhir.client.put(
        f"/fhir/Observation/{vital['id']}", json=dict(vital, category=_category("laboratory")), headers=_headers(token)
    )
    _assert_forbidden(response)
    assert await _counts(fhir) == before
    assert await _current(fhir, vital["id"]) == vital


async def test_a_vital_signs_observation_cannot_be_deleted_with_a_laboratory_only_scope(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    vital = await _stored(fhir, patient, "vital-signs")
    token = await fhir.token(LAB_ONLY, patient=patient)
    before = await _counts(fhir)
    _assert_forbidden(await fhir.client.delete(f"/fhir/Observation/{vital['id']}", headers=_headers(token)))
    assert await _counts(fhir) == before
    assert await _current(fhir, vital["id"]) == vital


async def test_a_token_reading_every_category_may_write_only_the_category_its_write_scope_names(
    fhir: FhirHarness,
) -> None:
    patient = fhir.patient_of(0)
    vital = await _stored(fhir, patient, "vital-signs")
    token = await fhir.token(
        f"patient/Observation.rs patient/Observation.cud?category={CATEGORIES}|laboratory", patient=patient
    )
    assert (await fhir.get(f"Observation/{vital['id']}", token)).status_code == 200
    response = await fhir.client.put(
        f"/fhir/Observation/{vital['id']}", json=dict(vital, status="amended"), headers=_headers(token)
    )
    _assert_forbidden(response)
    assert await _current(fhir, vital["id"]) == vital


async def test_a_laboratory_only_scope_still_creates_updates_and_deletes_laboratory_observations(
    fhir: FhirHarness,
) -> None:
    patient = fhir.patient_of(0)
    token = await fhir.token(LAB_ONLY, patient=patient)
    created = await fhir.client.post(
        "/fhir/Observation", json=_observation(patient, "laboratory"), headers=_headers(token)
    )
    assert created.status_code == 201, created.text
    rid = created.json()["id"]
    updated = await fhir.client.put(
        f"/fhir/Observation/{rid}", json=dict(created.json(), status="amended"), headers=_headers(token)
    )
    assert updated.status_code == 200, updated.text
    assert (await _current(fhir, rid))["status"] == "amended"
    lab = await _stored(fhir, patient, "laboratory")
    assert (await fhir.client.delete(f"/fhir/Observation/{lab['id']}", headers=_headers(token))).status_code == 204
    assert (await fhir.get(f"Observation/{lab['id']}", await fhir.token(SYSTEM))).status_code == 410


# --- transactions and batches --------------------------------------------------------------------


def _bad_entries(patient: str, lab: dict[str, Any], vital: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One entry outside the laboratory filter, per way of writing."""
    identifier = vital["identifier"][0]
    return {
        "create-vital-signs": {
            "resource": _observation(patient, "vital-signs"),
            "request": {"method": "POST", "url": "Observation"},
        },
        "create-without-category": {
            "resource": _observation(patient, None),
            "request": {"method": "POST", "url": "Observation"},
        },
        "update-laboratory-into-vital-signs": {
            "resource": dict(lab, category=_category("vital-signs")),
            "request": {"method": "PUT", "url": f"Observation/{lab['id']}"},
        },
        "rewrite-vital-signs-as-laboratory": {
            "resource": dict(vital, category=_category("laboratory")),
            "request": {"method": "PUT", "url": f"Observation/{vital['id']}"},
        },
        "conditional-update-of-vital-signs": {
            "resource": {**{k: v for k, v in vital.items() if k != "id"}, "category": _category("laboratory")},
            "request": {"method": "PUT", "url": f"Observation?identifier={identifier['system']}|{identifier['value']}"},
        },
        "delete-vital-signs": {"request": {"method": "DELETE", "url": f"Observation/{vital['id']}"}},
    }


BAD = [
    "create-vital-signs",
    "create-without-category",
    "update-laboratory-into-vital-signs",
    "rewrite-vital-signs-as-laboratory",
    "conditional-update-of-vital-signs",
    "delete-vital-signs",
]


@pytest.mark.parametrize("bad", BAD)
async def test_a_transaction_with_one_entry_outside_the_granular_scope_stores_nothing(
    fhir: FhirHarness, bad: str
) -> None:
    patient = fhir.patient_of(0)
    lab, vital = await _stored(fhir, patient, "laboratory"), await _stored(fhir, patient, "vital-signs")
    # Read-and-search on every category, so the conditional update finds the vital-signs one.
    token = await fhir.token(f"patient/Observation.rs {LAB_ONLY}", patient=patient)
    good = {"resource": _observation(patient, "laboratory"), "request": {"method": "POST", "url": "Observation"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [good, _bad_entries(patient, lab, vital)[bad]]}
    before = await _counts(fhir)
    _assert_forbidden(await fhir.client.post("/fhir", json=bundle, headers=_headers(token)))
    assert await _counts(fhir) == before
    assert await _current(fhir, lab["id"]) == lab
    assert await _current(fhir, vital["id"]) == vital


async def test_in_a_batch_only_the_entries_outside_the_granular_scope_are_refused(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    lab, vital = await _stored(fhir, patient, "laboratory"), await _stored(fhir, patient, "vital-signs")
    token = await fhir.token(f"patient/Observation.rs {LAB_ONLY}", patient=patient)
    bad = _bad_entries(patient, lab, vital)
    good = {"resource": _observation(patient, "laboratory"), "request": {"method": "POST", "url": "Observation"}}
    names = [n for n in BAD if n != "conditional-update-of-vital-signs"]  # batches take no conditional update
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [good, *(bad[n] for n in names)]}
    versions = (await _counts(fhir))[1]
    response = await fhir.client.post("/fhir", json=bundle, headers=_headers(token))
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201"] + ["403"] * len(names)
    assert {e["response"]["outcome"]["issue"][0]["code"] for e in entries[1:]} == {"forbidden"}
    assert (await _counts(fhir))[1] == versions + 1  # the laboratory Observation, nothing else
    assert (await _current(fhir, entries[0]["resource"]["id"]))["category"] == _category("laboratory")
    assert await _current(fhir, lab["id"]) == lab
    assert await _current(fhir, vital["id"]) == vital


async def test_a_transaction_inside_the_granular_scope_is_applied(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    lab = await _stored(fhir, patient, "laboratory")
    token = await fhir.token(LAB_ONLY, patient=patient)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _observation(patient, "laboratory"), "request": {"method": "POST", "url": "Observation"}},
            {"resource": dict(lab, status="amended"), "request": {"method": "PUT", "url": f"Observation/{lab['id']}"}},
        ],
    }
    response = await fhir.client.post("/fhir", json=bundle, headers=_headers(token))
    assert response.status_code == 200, response.text
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created", "200 OK"]
    assert (await _current(fhir, lab["id"]))["status"] == "amended"
