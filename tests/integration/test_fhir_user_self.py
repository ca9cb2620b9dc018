"""The signed-in user reads themself: a token whose fhirUser is a Practitioner, with a Practitioner
(or PractitionerRole) read scope, sees that Practitioner and their PractitionerRoles — so
fhirclient's `client.user.read()` works — and no other resource outside the patient compartment.
Another Practitioner stays exactly as invisible as a missing one."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.fhirharness import FhirHarness

SYSTEM = "system/*.cruds"


def _ids(bundle: dict[str, Any], rtype: str | None = None) -> set[str]:
    return {
        e["resource"]["id"] for e in bundle.get("entry", []) if rtype is None or e["resource"]["resourceType"] == rtype
    }


def _me_and_other(fhir: FhirHarness) -> tuple[str, str]:
    return fhir.data.practitioners[0].id, fhir.data.practitioners[1].id


async def _create(fhir: FhirHarness, resource: dict[str, Any]) -> str:
    token = await fhir.token(SYSTEM)
    response = await fhir.client.post(
        f"/fhir/{resource['resourceType']}",
        json=resource,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _role_of(fhir: FhirHarness, practitioner: str) -> str:
    return await _create(
        fhir,
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner}"},
        },
    )


def _as_missing(response: Any, rid: str) -> dict[str, Any]:
    """The 404 body with the asked-for id taken out: what must not differ between hidden and missing."""
    assert response.status_code == 404, response.text
    body: dict[str, Any] = response.json()
    for issue in body.get("issue", []):
        issue["diagnostics"] = issue.get("diagnostics", "").replace(rid, "<id>")
    return body


@pytest.mark.parametrize("scope", ["user/Practitioner.rs", "user/Practitioner.read", "patient/Practitioner.rs"])
async def test_a_practitioner_user_reads_themself_by_read_and_by_id_search(fhir: FhirHarness, scope: str) -> None:
    me, _ = _me_and_other(fhir)
    patient = fhir.patient_of(0) if scope.startswith("patient/") else None
    token = await fhir.token(scope, patient=patient, user=f"Practitioner/{me}")
    read = await fhir.get(f"Practitioner/{me}", token)
    assert read.status_code == 200, read.text
    assert (read.json()["resourceType"], read.json()["id"]) == ("Practitioner", me)
    assert _ids((await fhir.get("Practitioner", token, _id=me)).json()) == {me}
    assert _ids((await fhir.get("Practitioner", token, _count=200)).json()) == {me}


async def test_a_read_only_v2_scope_reads_the_user_but_does_not_search(fhir: FhirHarness) -> None:
    me, _ = _me_and_other(fhir)
    token = await fhir.token("user/Practitioner.r", user=f"Practitioner/{me}")
    assert (await fhir.get(f"Practitioner/{me}", token)).status_code == 200
    assert (await fhir.get("Practitioner", token, _id=me)).status_code == 403


async def test_another_practitioner_looks_exactly_like_a_missing_one(fhir: FhirHarness) -> None:
    me, other = _me_and_other(fhir)
    token = await fhir.token("user/Practitioner.rs user/Patient.rs", user=f"Practitioner/{me}")
    hidden = await fhir.get(f"Practitioner/{other}", token)
    missing = await fhir.get("Practitioner/no-such-practitioner", token)
    assert _as_missing(hidden, other) == _as_missing(missing, "no-such-practitioner")
    assert hidden.headers.get("etag") is None
    other_name = (await fhir.get(f"Practitioner/{other}", await fhir.token(SYSTEM))).json()["name"][0]["family"]
    for params in ({"_id": other}, {"_id": f"{me},{other}"}, {"family": other_name}, {"_count": "200"}):
        assert other not in _ids((await fhir.get("Practitioner", token, **params)).json()), params
    assert (await fhir.get(f"Practitioner/{other}/_history", token)).status_code == 404


async def test_another_practitioner_cannot_be_reached_by_include_revinclude_or_chain(fhir: FhirHarness) -> None:
    me, other = _me_and_other(fhir)
    patient = fhir.patient_of(0)
    # An Encounter of my patient names the other Practitioner as a participant.
    encounter = await _create(
        fhir,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": f"Patient/{patient}"},
            "participant": [
                {"individual": {"reference": f"Practitioner/{other}"}},
                {"individual": {"reference": f"Practitioner/{me}"}},
            ],
        },
    )
    other_role, my_role = await _role_of(fhir, other), await _role_of(fhir, me)
    token = await fhir.token(
        "user/Encounter.rs user/Practitioner.rs user/PractitionerRole.rs user/Patient.rs",
        user=f"Practitioner/{me}",
    )
    included = (await fhir.get("Encounter", token, _id=encounter, _include="Encounter:participant")).json()
    assert _ids(included, "Encounter") == {encounter}
    assert _ids(included, "Practitioner") == {me}
    revincluded = (await fhir.get("Practitioner", token, _revinclude="PractitionerRole:practitioner")).json()
    assert _ids(revincluded, "PractitionerRole") == {my_role}
    assert _ids(revincluded, "Practitioner") == {me}
    gp = (await fhir.get("Patient", token, _id=patient, _include="Patient:general-practitioner")).json()
    assert _ids(gp, "Practitioner") == {me}
    chained = (await fhir.get("Encounter", token, **{"participant:Practitioner._id": other})).json()
    assert "entry" not in chained
    hidden_role = (
        await fhir.get("PractitionerRole", token, _id=other_role, _include="PractitionerRole:practitioner")
    ).json()
    assert "entry" not in hidden_role


async def test_a_practitioner_user_finds_their_own_roles_and_no_one_elses(fhir: FhirHarness) -> None:
    me, other = _me_and_other(fhir)
    my_role, other_role = await _role_of(fhir, me), await _role_of(fhir, other)
    token = await fhir.token("user/PractitionerRole.rs", user=f"Practitioner/{me}")
    assert _ids((await fhir.get("PractitionerRole", token, practitioner=f"Practitioner/{me}")).json()) == {my_role}
    assert _ids((await fhir.get("PractitionerRole", token, _count=200)).json()) == {my_role}
    assert "entry" not in (await fhir.get("PractitionerRole", token, practitioner=f"Practitioner/{other}")).json()
    assert (await fhir.get(f"PractitionerRole/{my_role}", token)).status_code == 200
    assert _as_missing(await fhir.get(f"PractitionerRole/{other_role}", token), other_role) == _as_missing(
        await fhir.get("PractitionerRole/no-such-role", token), "no-such-role"
    )


@pytest.mark.parametrize(
    "user",
    [pytest.param(None, id="no-fhirUser"), pytest.param("patient", id="a-Patient-fhirUser")],
)
async def test_a_token_whose_user_is_no_practitioner_reads_no_practitioner(fhir: FhirHarness, user: str | None) -> None:
    me, _ = _me_and_other(fhir)
    patient = fhir.patient_of(0)
    fhir_user = f"Patient/{patient}" if user == "patient" else None
    for scope in ("patient/Practitioner.rs", "user/Practitioner.rs"):
        token = await fhir.token(scope, patient=patient, user=fhir_user)
        assert (await fhir.get(f"Practitioner/{me}", token)).status_code == 404, scope
        assert "entry" not in (await fhir.get("Practitioner", token, _count=200)).json(), scope


async def test_reading_oneself_grants_no_write_to_oneself(fhir: FhirHarness) -> None:
    me, _ = _me_and_other(fhir)
    system = await fhir.token(SYSTEM)
    before = (await fhir.get(f"Practitioner/{me}", system)).json()
    token = await fhir.token("user/Practitioner.cruds", user=f"Practitioner/{me}")
    changed = {**before, "active": False}
    changed.pop("meta", None)
    update = await fhir.client.put(
        f"/fhir/Practitioner/{me}",
        json=changed,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert update.status_code == 404
    delete = await fhir.client.delete(f"/fhir/Practitioner/{me}", headers={"Authorization": f"Bearer {token}"})
    assert delete.status_code == 204  # FHIR: deleting what one cannot see answers like success …
    after = (await fhir.get(f"Practitioner/{me}", system)).json()
    assert after == before  # … and nothing changed
