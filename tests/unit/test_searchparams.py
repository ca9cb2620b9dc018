"""The search parameter tables, the FHIRPath path compiler and value parsing, without a database."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from fhirserver import indexing, searchparams
from fhirserver.data import derive
from fhirserver.errors import FhirError
from fhirserver.indexing import compile_path, date_range, extract, fhirpathpy_nodes, walk
from fhirserver.search import _number_range, split_escaped

UTC = dt.UTC


def _examples(fixtures_dir: Path) -> list[dict[str, Any]]:
    """Every HL7 example of a supported type, including those inside example Bundles."""
    out = []
    for path in sorted((fixtures_dir / "fhir-r4-examples").glob("*.json")):
        resource = json.loads(path.read_bytes())
        inner = [e.get("resource") for e in resource.get("entry", [])] if resource["resourceType"] == "Bundle" else []
        out += [
            r
            for r in [resource, *inner]
            if isinstance(r, dict) and r.get("resourceType") in searchparams.SUPPORTED_TYPES
        ]
    return out


def _canonical(nodes: list[tuple[Any, str]]) -> set[str]:
    return {json.dumps(node, sort_keys=True) for node in nodes}


def test_the_path_compiler_agrees_with_fhirpathpy_on_every_example_and_parameter(fixtures_dir: Path) -> None:
    compared = non_empty = 0
    exercised: set[tuple[str, str]] = set()
    for resource in _examples(fixtures_dir):
        rtype = resource["resourceType"]
        for param in searchparams.indexed_params(rtype):
            branches = compile_path(rtype, param.expression)
            if branches is None:
                continue
            ours = walk(resource, rtype, branches)
            assert _canonical(ours) == _canonical(fhirpathpy_nodes(resource, param.expression)), (
                resource.get("id"),
                param.code,
            )
            compared += 1
            non_empty += bool(ours)
            if ours:
                exercised.add((rtype, param.code))
    assert compared > 13000 and non_empty > 4000
    assert len(exercised) > 250  # distinct (type, parameter) pairs that selected something


def test_every_indexed_parameter_compiles_but_one_which_falls_back_to_fhirpathpy() -> None:
    fallback = [
        (rtype, p.code)
        for rtype in sorted(searchparams.SUPPORTED_TYPES)
        for p in searchparams.indexed_params(rtype)
        if compile_path(rtype, p.expression) is None
    ]
    assert fallback == [("Patient", "deceased")]


@pytest.mark.parametrize(
    ("rtype", "expression", "resource", "expected"),
    [
        (
            "Observation",
            "(Observation.value as Quantity) | (Observation.value as SampledData)",
            {"valueQuantity": {"value": 1}, "valueString": "x"},
            [({"value": 1}, "Quantity")],
        ),
        (
            "Condition",
            "Condition.onset.as(dateTime)",
            {"onsetDateTime": "2020", "onsetAge": {}},
            [("2020", "dateTime")],
        ),
        (
            "Observation",
            "Observation.effective",
            {"effectivePeriod": {"start": "2020"}},
            [({"start": "2020"}, "Period")],
        ),
        (
            "Patient",
            "Patient.telecom.where(system='email')",
            {"telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]},
            [({"system": "email", "value": "a@b"}, "ContactPoint")],
        ),
        (
            "Observation",
            "Observation.subject.where(resolve() is Patient)",
            {"subject": {"reference": "https://x.example/fhir/Patient/7"}},
            [({"reference": "https://x.example/fhir/Patient/7"}, "Reference")],
        ),
        ("Observation", "Observation.subject.where(resolve() is Patient)", {"subject": {"reference": "Group/7"}}, []),
        ("Goal", "(Goal.start as date)", {"startDate": "2021-01-02"}, [("2021-01-02", "date")]),
        ("Patient", "Patient.id", {"id": "p1"}, [("p1", "string")]),
    ],
)
def test_compiled_paths_select_the_expected_typed_values(
    rtype: str, expression: str, resource: dict[str, Any], expected: list[tuple[Any, str]]
) -> None:
    branches = compile_path(rtype, expression)
    assert branches is not None
    assert walk({"resourceType": rtype, **resource}, rtype, branches) == expected


@pytest.mark.parametrize(
    "expression",
    [
        "Patient.deceased.exists() and Patient.deceased != false",
        "Patient.name.first()",
        "Patient.extension('http://x')",
        "Patient.nosuchelement",
        "Observation.value.code",  # below an untyped choice
    ],
)
def test_expressions_outside_the_subset_are_left_to_fhirpathpy(expression: str) -> None:
    rtype = expression.split(".", maxsplit=1)[0]
    assert compile_path(rtype, expression) is None


def test_branches_rooted_at_other_types_are_dropped() -> None:
    branches = compile_path("Condition", "AllergyIntolerance.code | Condition.code")
    assert branches is not None and len(branches) == 1


def test_the_shipped_tables_are_what_derive_makes_of_the_official_definitions(fixtures_dir: Path) -> None:
    definitions = fixtures_dir / "fhir-r4-definitions"
    table = derive.search_table(json.loads((definitions / "search-parameters.json").read_bytes()))
    compartment = derive.compartment_table(
        json.loads((definitions / "CompartmentDefinition-patient.json").read_bytes())
    )
    shipped = Path(derive.__file__).parent
    assert json.loads((shipped / "search-parameters.json").read_text()) == table
    assert json.loads((shipped / "compartment-patient.json").read_text()) == compartment


def test_every_type_in_the_synthea_bundles_is_supported(fixtures_dir: Path) -> None:
    types = {
        entry["resource"]["resourceType"]
        for path in (fixtures_dir / "synthea-r4").glob("*.json")
        for entry in json.loads(path.read_bytes())["entry"]
    }
    assert types <= searchparams.SUPPORTED_TYPES


def test_the_compartment_table_names_reference_parameters_that_can_point_at_a_patient() -> None:
    for rtype in searchparams.SUPPORTED_TYPES:
        for code in searchparams.compartment_params(rtype) or ():
            param = searchparams.get(rtype, code)
            assert param is not None and param.type == "reference" and "Patient" in param.targets, (rtype, code)
    assert searchparams.compartment_params("Practitioner") is None
    assert searchparams.compartment_params("Observation") == ("subject", "performer")


# --- extraction ------------------------------------------------------------------------------


def test_extraction_of_a_patient_covers_tokens_strings_references_and_dates() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": "urn:mrn", "value": "42", "type": {"text": "MRN"}}],
        "name": [{"family": "Muñoz", "given": ["Ana", "María"], "prefix": ["Dr."]}],
        "gender": "female",
        "active": True,
        "birthDate": "1980-05",
        "generalPractitioner": [{"reference": "Practitioner/d1"}, {"reference": "https://else.example/Practitioner/9"}],
        "telecom": [{"system": "email", "value": "ana@example.org"}],
    }
    rows = extract(patient)
    assert ("identifier", "urn:mrn", "42", "mrn") in rows.token
    assert {("gender", None, "female", None), ("active", None, "true", None)} <= rows.token
    assert ("email", "email", "ana@example.org", None) in rows.token
    assert {("family", "munoz", "Muñoz"), ("given", "maria", "María"), ("name", "dr.", "Dr.")} <= rows.string
    assert ("general-practitioner", "Practitioner", "d1", None) in rows.reference
    assert ("general-practitioner", None, None, "https://else.example/Practitioner/9") in rows.reference
    low, high = dt.datetime(1980, 5, 1, tzinfo=UTC), dt.datetime(1980, 5, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert ("birthdate", low, high) in rows.date


def test_extraction_of_an_observation_covers_quantities_and_components() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "Blood pressure"},
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                "valueQuantity": {
                    "value": 120,
                    "unit": "mm[Hg]",
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            }
        ],
    }
    rows = extract(observation)
    assert ("code", None, "", "blood pressure") in rows.token
    assert ("component-code", "http://loinc.org", "8480-6", None) in rows.token
    assert ("combo-code", "http://loinc.org", "85354-9", None) in rows.token
    assert ("component-value-quantity", 120.0, 120.0, "http://unitsofmeasure.org", "mm[Hg]", "mm[Hg]") in rows.quantity


# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", "2020-01-01T00:00:00+00:00", "2020-12-31T23:59:59.999999+00:00"),
        ("2020-02", "2020-02-01T00:00:00+00:00", "2020-02-29T23:59:59.999999+00:00"),
        ("2020-02-03", "2020-02-03T00:00:00+00:00", "2020-02-03T23:59:59.999999+00:00"),
        ("2020-02-03T10:15", "2020-02-03T10:15:00+00:00", "2020-02-03T10:15:59.999999+00:00"),
        ("2020-02-03T10:15:30-05:00", "2020-02-03T15:15:30+00:00", "2020-02-03T15:15:30.999999+00:00"),
        ("2020-02-03T10:15:30.25Z", "2020-02-03T10:15:30.250000+00:00", "2020-02-03T10:15:30.259999+00:00"),
        ("9999", "9999-01-01T00:00:00+00:00", "9999-12-31T23:59:59.999999+00:00"),
    ],
)
def test_a_date_covers_the_range_of_its_precision_in_utc(text: str, low: str, high: str) -> None:
    assert date_range(text) == (dt.datetime.fromisoformat(low), dt.datetime.fromisoformat(high))


@pytest.mark.parametrize("text", ["2020-13", "2020-02-30", "20", "2020-1-1", "2020-02-03T25:00", "yesterday", ""])
def test_malformed_dates_have_no_range(text: str) -> None:
    assert date_range(text) is None


def test_escaped_separators_stay_in_the_value() -> None:
    assert split_escaped(r"a\,b,c", ",") == ["a,b", "c"]
    assert split_escaped(r"sys|co\|de|x", "|", maxsplit=1) == ["sys", "co|de|x"]
    assert split_escaped("a\\\\,b", ",") == ["a\\", "b"]


def test_a_number_has_the_implicit_range_of_its_significant_digits() -> None:
    assert _number_range("n", "100") == (100.0, 99.5, 100.5)
    assert _number_range("n", "100.00") == (100.0, 99.995, 100.005)
    assert _number_range("n", "1e2") == (100.0, 50.0, 150.0)
    with pytest.raises(FhirError):
        _number_range("n", "ten")


def test_normalisation_folds_case_and_accents() -> None:
    assert indexing.normalize("ÅNGSTRÖM Zoë") == "angstrom zoe"
