"""vread and `_history` show a version only if that version lies in the token's compartment and
granular filters; every other version looks as if it did not exist (fhirserver/history.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import select

from fhirserver.compartments import in_compartment
from fhirserver.history import in_compartment_of
from fhirserver.models import ResourceRow
from tests.integration.fhirharness import FhirHarness

SYSTEM = "system/*.cruds"
CATEGORIES = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB_ONLY = f"patient/Observation.rs?category={CATEGORIES}|laboratory"


@pytest.fixture
def fhir_patients() -> int:
    return 3


async def _stored(fhir: FhirHarness, patient: str, category: str) -> dict[str, Any]:
    token = await fhir.token(SYSTEM)
    bundle = (await fhir.get("Observation", token, patient=patient, category=f"{CATEGORIES}|{category}")).json()
    resource: dict[str, Any] = bundle["entry"][0]["resource"]
    return resource


async def _put(fhir: FhirHarness, resource: dict[str, Any]) -> dict[str, Any]:
    """An update by a backend client (unrestricted), as a correction would be made."""
    response = await fhir.client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}",
        json=resource,
        headers={"Authorization": f"Bearer {await fhir.token(SYSTEM)}", "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _versions(history: dict[str, Any]) -> list[str]:
    return [e["response"]["etag"] for e in history.get("entry", [])]


def _assert_like_a_missing_version(response: Any, missing: Any) -> None:
    assert response.status_code == missing.status_code == 404
    assert response.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"] == "not-found"


async def test_after_an_observation_moves_to_another_patient_each_patient_sees_only_their_own_versions(
    fhir: FhirHarness,
) -> None:
    a, b = fhir.patient_of(0), fhir.patient_of(1)
    misfiled = await _stored(fhir, a, "laboratory")
    await _put(fhir, dict(misfiled, subject={"reference": f"Patient/{b}"}))
    rid = misfiled["id"]
    token_a = await fhir.token("patient/*.rs", patient=a)
    token_b = await fhir.token("patient/*.rs", patient=b)

    # B sees the corrected version only: A's version is a version that does not exist.
    missing = await fhir.get(f"Observation/{rid}/_history/99", token_b)
    _assert_like_a_missing_version(await fhir.get(f"Observation/{rid}/_history/1", token_b), missing)
    assert (await fhir.get(f"Observation/{rid}/_history/2", token_b)).json()["subject"]["reference"] == f"Patient/{b}"
    history_b = (await fhir.get(f"Observation/{rid}/_history", token_b)).json()
    assert _versions(history_b) == ['W/"2"'] and history_b["total"] == 1
    assert {e["resource"]["subject"]["reference"] for e in history_b["entry"]} == {f"Patient/{b}"}

    # A no longer sees the resource, nor B's version of it; only what was filed under A.
    assert (await fhir.get(f"Observation/{rid}", token_a)).status_code == 404
    _assert_like_a_missing_version(await fhir.get(f"Observation/{rid}/_history/2", token_a), missing)
    assert (await fhir.get(f"Observation/{rid}/_history/1", token_a)).json()["subject"]["reference"] == f"Patient/{a}"
    history_a = (await fhir.get(f"Observation/{rid}/_history", token_a)).json()
    assert _versions(history_a) == ['W/"1"'] and history_a["total"] == 1

    # A third patient sees no version at all: the history is that of a resource that does not exist.
    token_c = await fhir.token("patient/*.rs", patient=fhir.patient_of(2))
    assert (await fhir.get(f"Observation/{rid}/_history", token_c)).status_code == 404
    assert (await fhir.get("Observation/no-such-id/_history", token_c)).status_code == 404


async def test_a_granular_scope_sees_only_the_versions_inside_its_filter(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    lab = await _stored(fhir, patient, "laboratory")
    vital_category = [{"coding": [{"system": CATEGORIES, "code": "vital-signs"}]}]
    await _put(fhir, dict(lab, category=vital_category))  # version 2: vital-signs
    await _put(fhir, lab)  # version 3: laboratory again
    rid = lab["id"]
    token = await fhir.token(LAB_ONLY, patient=patient)
    history = (await fhir.get(f"Observation/{rid}/_history", token)).json()
    assert _versions(history) == ['W/"3"', 'W/"1"'] and history["total"] == 2
    missing = await fhir.get(f"Observation/{rid}/_history/99", token)
    _assert_like_a_missing_version(await fhir.get(f"Observation/{rid}/_history/2", token), missing)
    assert (await fhir.get(f"Observation/{rid}/_history/1", token)).status_code == 200


async def test_once_a_result_leaves_the_granular_filter_none_of_its_versions_is_shown(fhir: FhirHarness) -> None:
    patient = fhir.patient_of(0)
    lab = await _stored(fhir, patient, "laboratory")
    await _put(fhir, dict(lab, category=[{"coding": [{"system": CATEGORIES, "code": "vital-signs"}]}]))
    token = await fhir.token(LAB_ONLY, patient=patient)
    assert (await fhir.get(f"Observation/{lab['id']}/_history", token)).status_code == 404
    assert (await fhir.get(f"Observation/{lab['id']}/_history/2", token)).status_code == 404
    # Fail closed: the laboratory version 1 cannot be judged without the current one, so it is hidden too.
    assert (await fhir.get(f"Observation/{lab['id']}/_history/1", token)).status_code == 404


async def test_the_versions_of_a_deleted_resource_stay_visible_to_its_patient_and_no_one_else(
    fhir: FhirHarness,
) -> None:
    patient = fhir.patient_of(0)
    obs = await _stored(fhir, patient, "vital-signs")
    deleted = await fhir.client.delete(
        f"/fhir/Observation/{obs['id']}", headers={"Authorization": f"Bearer {await fhir.token(SYSTEM)}"}
    )
    assert deleted.status_code == 204
    mine = await fhir.token("patient/Observation.rs", patient=patient)
    assert (await fhir.get(f"Observation/{obs['id']}/_history/1", mine)).json()["id"] == obs["id"]
    assert (await fhir.get(f"Observation/{obs['id']}/_history/2", mine)).status_code == 410
    history = (await fhir.get(f"Observation/{obs['id']}/_history", mine)).json()
    assert _versions(history) == ['W/"2"', 'W/"1"'] and history["entry"][0]["request"]["method"] == "DELETE"
    theirs = await fhir.token("patient/Observation.rs", patient=fhir.patient_of(1))
    for path in ("_history", "_history/1", "_history/2"):
        assert (await fhir.get(f"Observation/{obs['id']}/{path}", theirs)).status_code == 404, path


async def test_the_compartment_of_a_version_is_decided_by_the_same_rule_as_the_search_index(
    fhir: FhirHarness,
) -> None:
    mine = frozenset({fhir.patient_of(0)})
    async with fhir.fhir_app.state.runtime.sessions() as session:
        stored = (await session.execute(select(ResourceRow).where(ResourceRow.deleted.is_(False)))).scalars().all()
        verdicts = set()
        for row in stored:
            content = orjson.loads(row.content or "{}")
            expected = await in_compartment(session, row.resource_type, row.id, mine)
            assert in_compartment_of(content, mine) == expected, f"{row.resource_type}/{row.id}"
            verdicts.add(expected)
    assert verdicts == {True, False}
