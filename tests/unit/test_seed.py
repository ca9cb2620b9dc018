"""The synthetic FHIR data set: deterministic, self-consistent, valid R4, and safe to re-load."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

import mockehr.seed
from mockehr.seed import REFERENCE_DATE, SEED_SYSTEM, SeedResult, generate

PROJECT_ROOT = Path(mockehr.seed.__file__).resolve().parents[1]

VITAL_LOINC = {"8867-4", "29463-7", "8302-2", "39156-5", "85354-9"}
LAB_LOINC = {"4548-4", "2345-7", "2160-0", "18262-6", "2823-3"}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# Generous physiological bounds: a value outside these is a generator bug, not a sick patient.
PLAUSIBLE = {
    "8867-4": (40, 120),
    "29463-7": (35, 200),
    "8302-2": (135, 210),
    "39156-5": (15, 50),
    "4548-4": (4, 12),
    "2345-7": (60, 300),
    "2160-0": (0.4, 2.5),
    "18262-6": (40, 220),
    "2823-3": (3.0, 6.0),
}


@functools.cache
def seeded(patients: int = 30, seed: int = 1) -> SeedResult:
    """Generation is deterministic, so tests share results (they must not mutate them)."""
    return generate(patients, seed)


def resources(result: SeedResult) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in result.bundle["entry"]]


def of_type(result: SeedResult, rtype: str) -> list[dict[str, Any]]:
    return [res for res in resources(result) if res["resourceType"] == rtype]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def patient_of(resource: dict[str, Any]) -> str:
    ref = resource.get("subject") or resource["patient"]
    return str(ref["reference"])


def canonical(result: SeedResult) -> str:
    return json.dumps(result.bundle, sort_keys=True)


def test_generate_is_deterministic_for_the_same_seed() -> None:
    first, second = generate(30, 7), generate(30, 7)
    assert canonical(first) == canonical(second)
    assert first.practitioners == second.practitioners
    assert first.patient_ids == second.patient_ids
    assert first.careteam_member_patients == second.careteam_member_patients


def test_generate_is_deterministic_across_processes_and_hash_seeds() -> None:
    # Catches output that depends on set/str hash order, which varies with PYTHONHASHSEED.
    script = (
        "import hashlib, json; from mockehr.seed import generate; "
        "print(hashlib.sha256(json.dumps(generate(12, 3).bundle, sort_keys=True).encode()).hexdigest())"
    )
    expected = hashlib.sha256(canonical(seeded(12, 3)).encode()).hexdigest()
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(PROJECT_ROOT)}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


def test_a_different_seed_gives_different_data_under_the_same_patient_ids() -> None:
    one, two = seeded(30, 1), seeded(30, 2)
    assert canonical(one) != canonical(two)
    # Ids come from stable names, not the seed: re-seeding updates the same Patients.
    assert one.patient_ids == two.patient_ids
    assert [p.id for p in one.practitioners] == [p.id for p in two.practitioners]
    names_one = [p["name"][0]["text"] + p["birthDate"] for p in of_type(one, "Patient")]
    names_two = [p["name"][0]["text"] + p["birthDate"] for p in of_type(two, "Patient")]
    assert sum(a != b for a, b in zip(names_one, names_two, strict=True)) > 20


@pytest.mark.parametrize(("patients", "practitioners"), [(1, 3), (30, 3), (31, 4), (200, 20)])
def test_there_is_one_practitioner_per_ten_patients_and_at_least_three(patients: int, practitioners: int) -> None:
    result = seeded(patients)
    assert len(result.practitioners) == practitioners
    assert len(of_type(result, "Practitioner")) == practitioners
    assert len(of_type(result, "Organization")) == 1


def test_panels_are_disjoint_and_cover_every_patient() -> None:
    result = seeded(31)
    panels = [set(p.patient_ids) for p in result.practitioners]
    assert sum(len(panel) for panel in panels) == len(result.patient_ids) == 31
    assert set().union(*panels) == set(result.patient_ids)
    gp_of = {pid: p.id for p in result.practitioners for pid in p.patient_ids}
    clinic = of_type(result, "Organization")[0]["id"]
    for patient in of_type(result, "Patient"):
        assert [gp["reference"] for gp in patient["generalPractitioner"]] == [f"Practitioner/{gp_of[patient['id']]}"]
        assert patient["managingOrganization"]["reference"] == f"Organization/{clinic}"
    assert max(map(len, panels)) - min(map(len, panels)) <= 1  # round robin


def test_usernames_and_displays_identify_practitioners() -> None:
    result = seeded(200)  # 20 practitioners: more than the list of named doctors
    usernames = [p.username for p in result.practitioners]
    assert usernames[0] == "dr.alvarez"
    assert result.practitioners[0].display == "Dr. Maria Alvarez"
    assert len(set(usernames)) == len(usernames)
    assert all(re.fullmatch(r"[a-z][a-z0-9.]*", name) for name in usernames)
    for demo, resource in zip(result.practitioners, of_type(result, "Practitioner"), strict=True):
        assert resource["id"] == demo.id
        assert resource["name"][0]["text"] == demo.display
        systems = {ident["system"]: ident["value"] for ident in resource["identifier"]}
        assert systems[f"{SEED_SYSTEM}/username"] == demo.username
        assert re.fullmatch(r"[12]\d{9}", systems["http://hl7.org/fhir/sid/us-npi"])


def test_practitioner_npis_have_a_valid_luhn_check_digit() -> None:
    for resource in of_type(seeded(200), "Practitioner"):
        npi = next(i["value"] for i in resource["identifier"] if i["system"] == "http://hl7.org/fhir/sid/us-npi")
        digits = [int(c) for c in "80840" + npi]
        total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(reversed(digits)))
        assert total % 10 == 0, npi


@pytest.mark.parametrize("patients", [1, 2, 30, 31])
def test_the_careteam_member_is_not_the_gp_of_its_patient(patients: int) -> None:
    result = seeded(patients)
    gp_of = {pid: p.id for p in result.practitioners for pid in p.patient_ids}
    teams = of_type(result, "CareTeam")
    assert teams
    via_team: dict[str, set[str]] = defaultdict(set)
    for team in teams:
        assert team["status"] == "active"
        patient_id = team["subject"]["reference"].removeprefix("Patient/")
        for participant in team["participant"]:
            member = participant["member"]["reference"].removeprefix("Practitioner/")
            assert member != gp_of[patient_id]
            via_team[member].add(patient_id)
    assert {k: set(v) for k, v in result.careteam_member_patients.items()} == via_team
    panels = {p.id: set(p.patient_ids) for p in result.practitioners}
    for member, reached in result.careteam_member_patients.items():
        assert not set(reached) & panels[member]


def test_every_reference_points_to_a_resource_in_the_bundle() -> None:
    result = seeded(30)
    present = {f"{res['resourceType']}/{res['id']}" for res in resources(result)}
    found = [ref for res in resources(result) for ref in references(res)]
    assert found
    assert all(re.fullmatch(r"[A-Za-z]+/[0-9a-f-]{36}", ref) for ref in found)  # literal, never urn:uuid
    assert set(found) <= present


def test_every_entry_is_an_idempotent_put_with_a_client_id() -> None:
    result = seeded(30)
    assert result.bundle["resourceType"] == "Bundle"
    assert result.bundle["type"] == "transaction"
    for entry in result.bundle["entry"]:
        res = entry["resource"]
        assert uuid.UUID(res["id"]).version == 5
        assert entry["fullUrl"] == f"urn:uuid:{res['id']}"
        assert entry["request"] == {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}


def test_ids_are_unique() -> None:
    ids = [res["id"] for res in resources(seeded(200))]
    assert len(ids) == len(set(ids))


def test_every_resource_has_a_stable_seed_identifier() -> None:
    one, two = seeded(30, 1), seeded(30, 2)
    for result in (one, two):
        for res in resources(result):
            system = f"{SEED_SYSTEM}/{res['resourceType'].lower()}"
            values = [i["value"] for i in res["identifier"] if i["system"] == system]
            assert len(values) == 1, res["id"]
    patients_one = [p["identifier"][0]["value"] for p in of_type(one, "Patient")]
    assert patients_one == [p["identifier"][0]["value"] for p in of_type(two, "Patient")]
    assert patients_one[0] == "MRN-000001"
    # mockehr.demo recognises a seeded store by this identifier.
    clinic = of_type(one, "Organization")[0]["identifier"][0]
    assert clinic == {"system": f"{SEED_SYSTEM}/organization", "value": "clinic"}


def test_every_resource_validates_against_the_r4b_models() -> None:
    result = seeded(30)
    seen = set()
    for res in resources(result):
        get_fhir_model_class(res["resourceType"]).model_validate(res)
        seen.add(res["resourceType"])
    assert seen == {
        "Organization",
        "Practitioner",
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "MedicationRequest",
        "AllergyIntolerance",
        "CareTeam",
    }
    get_fhir_model_class("Bundle").model_validate(result.bundle)


def test_entry_count_scales_with_the_number_of_patients() -> None:
    for patients in (10, 100):
        result = seeded(patients)
        counts = Counter(res["resourceType"] for res in resources(result))
        assert counts["Patient"] == patients
        assert patients <= counts["Encounter"] <= 3 * patients
        assert patients <= counts["Condition"] <= 4 * patients
        assert counts["Observation"] == 10 * counts["Encounter"]  # 5 vitals + 5 labs per visit
        assert counts["MedicationRequest"] <= 3 * patients
        assert counts["AllergyIntolerance"] <= 2 * patients
        assert len(result.bundle["entry"]) == sum(counts.values())
    assert 8 * len(seeded(10).bundle["entry"]) < len(seeded(100).bundle["entry"]) < 12 * len(seeded(10).bundle["entry"])


def test_per_patient_counts_stay_in_their_ranges() -> None:
    result = seeded(200)
    per_patient: dict[str, Counter[str]] = defaultdict(Counter)
    for res in resources(result):
        if res["resourceType"] not in {"Organization", "Practitioner", "Patient", "CareTeam"}:
            per_patient[patient_of(res)][res["resourceType"]] += 1
    for pid in result.patient_ids:
        counts = per_patient[f"Patient/{pid}"]
        assert 1 <= counts["Encounter"] <= 3
        assert 1 <= counts["Condition"] <= 4
        assert counts["MedicationRequest"] <= 3
        assert counts["AllergyIntolerance"] <= 2
    # The RNG actually exercises the ranges rather than sticking to one value.
    assert {c["Encounter"] for c in per_patient.values()} == {1, 2, 3}
    assert {c["MedicationRequest"] for c in per_patient.values()} == {0, 1, 2, 3}
    assert {c["AllergyIntolerance"] for c in per_patient.values()} == {0, 1, 2}


def test_each_patient_has_vitals_with_the_loinc_codes_at_every_encounter() -> None:
    result = seeded(30)
    vitals: dict[str, set[str]] = defaultdict(set)
    for obs in of_type(result, "Observation"):
        category = obs["category"][0]["coding"][0]["code"]
        if category == "vital-signs":
            assert obs["code"]["coding"][0]["system"] == "http://loinc.org"
            vitals[obs["encounter"]["reference"]].add(obs["code"]["coding"][0]["code"])
            if obs["code"]["coding"][0]["code"] == "85354-9":
                parts = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in obs["component"]}
                assert set(parts) == {"8480-6", "8462-4"}
                assert all(q["code"] == "mm[Hg]" and q["system"] == "http://unitsofmeasure.org" for q in parts.values())
                assert 50 <= parts["8462-4"]["value"] < parts["8480-6"]["value"] <= 180
    encounters = of_type(result, "Encounter")
    assert {f"Encounter/{e['id']}" for e in encounters} == set(vitals)
    assert all(codes == VITAL_LOINC for codes in vitals.values())
    patients_with_vitals = {e["subject"]["reference"] for e in encounters}
    assert patients_with_vitals == {f"Patient/{pid}" for pid in result.patient_ids}


def test_observations_have_plausible_ucum_values() -> None:
    result = seeded(100)
    labs: dict[str, set[str]] = defaultdict(set)
    for obs in of_type(result, "Observation"):
        assert obs["status"] == "final"
        code = obs["code"]["coding"][0]["code"]
        if obs["category"][0]["coding"][0]["code"] == "laboratory":
            labs[patient_of(obs)].add(code)
        if code in PLAUSIBLE:
            quantity = obs["valueQuantity"]
            assert quantity["system"] == "http://unitsofmeasure.org"
            low, high = PLAUSIBLE[code]
            assert low <= quantity["value"] <= high, (code, quantity)
    assert len(labs) == 100
    assert all(codes == LAB_LOINC for codes in labs.values())


def test_patients_are_adults_aged_18_to_90_on_the_reference_date() -> None:
    for patient in of_type(seeded(200), "Patient"):
        born = date.fromisoformat(patient["birthDate"])
        age = REFERENCE_DATE.year - born.year - ((REFERENCE_DATE.month, REFERENCE_DATE.day) < (born.month, born.day))
        assert 18 <= age <= 90
        assert patient["gender"] in {"male", "female"}
        assert patient["name"][0]["family"] and patient["name"][0]["given"]
        assert patient["address"][0]["country"] == "US"


def test_every_datetime_has_a_timezone_and_precedes_the_reference_date() -> None:
    stamps = [s for res in resources(seeded(30)) for s in strings(res) if re.fullmatch(r"\d{4}-\d\d-\d\dT.*", s)]
    assert stamps
    for stamp in stamps:
        moment = datetime.fromisoformat(stamp)
        assert moment.utcoffset() is not None, stamp
        assert moment.date() < REFERENCE_DATE


def test_condition_onset_falls_between_birth_and_the_first_visit() -> None:
    result = seeded(100)
    born = {f"Patient/{p['id']}": date.fromisoformat(p["birthDate"]) for p in of_type(result, "Patient")}
    visits = {e["id"]: datetime.fromisoformat(e["period"]["start"]) for e in of_type(result, "Encounter")}
    for cond in of_type(result, "Condition"):
        onset = datetime.fromisoformat(cond["onsetDateTime"])
        recorded_at = visits[cond["encounter"]["reference"].removeprefix("Encounter/")]
        assert born[cond["subject"]["reference"]] < onset.date() <= recorded_at.date()
        assert cond["clinicalStatus"]["coding"][0]["code"] == "active"


def test_clinical_resources_point_at_the_patients_gp_and_the_clinic() -> None:
    result = seeded(30)
    gp_of = {f"Patient/{pid}": f"Practitioner/{p.id}" for p in result.practitioners for pid in p.patient_ids}
    clinic = f"Organization/{of_type(result, 'Organization')[0]['id']}"
    for enc in of_type(result, "Encounter"):
        assert enc["status"] == "finished"
        assert enc["class"]["code"] == "AMB"
        assert enc["type"][0]["coding"][0]["code"] == "185349003"
        assert enc["participant"][0]["individual"]["reference"] == gp_of[enc["subject"]["reference"]]
        assert enc["serviceProvider"]["reference"] == clinic
    rxnorm = {"860975", "314076", "617312", "197361", "855332"}
    for req in of_type(result, "MedicationRequest"):
        assert (req["status"], req["intent"]) == ("active", "order")
        coding = req["medicationCodeableConcept"]["coding"][0]
        assert coding["system"] == RXNORM and coding["code"] in rxnorm
        assert req["requester"]["reference"] == gp_of[req["subject"]["reference"]]
        assert req["dosageInstruction"][0]["text"]


@pytest.mark.parametrize("patients", [0, -1, 100_001])
def test_patient_counts_outside_1_to_100000_are_refused(patients: int) -> None:
    with pytest.raises(ValueError, match="patients"):
        generate(patients)
