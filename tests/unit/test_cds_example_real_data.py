"""The example CDS Service's rules on real records: Synthea bundles and the official FHIR examples.

The Synthea fixtures hold no deceased patient, so the deceased cases take a real Synthea patient
and record a death as Synthea writes it (Patient.deceasedDateTime), or use the official R4
examples that carry deceasedDateTime and deceasedBoolean.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from examples.cds_service.cards import CallEnv
from examples.cds_service.greeting import greeting_card
from examples.cds_service.knowledge import BLOOD_PRESSURE, HBA1C
from examples.cds_service.results import finding_card, latest_finding
from examples.cds_service.vital_status import age, deceased

TODAY = dt.date(2026, 12, 7)


def synthea(fixtures_dir: Path, name: str) -> list[dict[str, Any]]:
    (path,) = (fixtures_dir / "synthea-r4").glob(f"{name}_*.json")
    return [entry["resource"] for entry in json.loads(path.read_text())["entry"]]


def of_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def env(patient_id: str) -> CallEnv:
    return CallEnv(TODAY, patient_id, "Practitioner/u1", "https://smart.test/launch")


def test_a_living_synthea_patient_is_greeted_with_the_age_today(fixtures_dir: Path) -> None:
    (patient,) = of_type(synthea(fixtures_dir, "Stephen_McLaughlin"), "Patient")  # born 1979-04-28

    assert greeting_card(patient, TODAY).summary == "Now seeing: Stephen McLaughlin, 47 years"


def test_a_deceased_synthea_patient_is_described_with_the_death_date_and_the_age_at_death(fixtures_dir: Path) -> None:
    (patient,) = of_type(synthea(fixtures_dir, "Stephen_McLaughlin"), "Patient")
    patient["deceasedDateTime"] = "1998-03-02T08:15:00-05:00"

    card = greeting_card(patient, TODAY)

    assert card.summary == "Record of Stephen McLaughlin, deceased 1998-03-02 aged 18"
    assert "Now seeing" not in card.summary and card.indicator == "info"


@pytest.mark.parametrize(
    ("example", "summary"),
    [
        ("Patient-pat3.json", "Record of Simon Notsowell, deceased 2015-02-14 aged 33"),
        ("Patient-pat4.json", "Record of Sandy Notsowell, deceased"),  # deceasedBoolean: no date, no age
        ("Patient-f001.json", "Now seeing: Pieter van de Heuvel, 82 years"),  # deceasedBoolean false
    ],
)
def test_the_official_examples_deceased_forms_are_each_described_truthfully(
    fixtures_dir: Path, example: str, summary: str
) -> None:
    patient = json.loads((fixtures_dir / "fhir-r4-examples" / example).read_text())

    assert greeting_card(patient, TODAY).summary == summary


@pytest.mark.parametrize(
    ("value", "death", "years"),
    [
        ({"deceasedDateTime": "1998"}, None, None),  # a year alone: deceased, day unknown, no age
        ({"deceasedDateTime": "2000-01-01"}, dt.date(2000, 1, 1), 19),
        ({"deceasedBoolean": False}, "living", 46),
        ({"deceasedBoolean": "yes"}, "living", 46),  # not a boolean: not a recorded death
    ],
)
def test_a_death_is_read_from_either_deceased_form_and_ages_stop_at_it(
    value: dict[str, Any], death: object, years: int | None
) -> None:
    patient = {"resourceType": "Patient", "birthDate": "1980-06-15", **value}

    found = deceased(patient)

    assert (found.on if found is not None else "living") == death
    assert age(patient, TODAY) == years


def test_synthea_blood_pressure_is_shown_in_whole_mmhg_with_the_observations_unit(fixtures_dir: Path) -> None:
    resources = synthea(fixtures_dir, "Stephen_McLaughlin")
    (patient,) = of_type(resources, "Patient")

    finding = latest_finding(BLOOD_PRESSURE, of_type(resources, "Observation"))

    assert finding is not None  # 170.81776607161012 / 108.04084831781385 mm[Hg] on 2019-05-04
    assert finding.values == (Decimal(171), Decimal(108)) and finding.unit == "mmHg"
    card = finding_card(finding, env(patient["id"]))
    assert card.summary == "Blood pressure 171/108 mmHg on 2019-05-04 is high; repeat overdue"
    assert card.detail is not None and "**Latest Blood pressure: 171/108 mmHg**" in card.detail


def test_synthea_hba1c_is_shown_to_one_decimal_rounded_half_up(fixtures_dir: Path) -> None:
    resources = synthea(fixtures_dir, "Lupe_Little")
    results = [o for o in of_type(resources, "Observation") if o["code"]["coding"][0]["code"] == "4548-4"]
    hba1c = max(results, key=lambda o: str(o["effectiveDateTime"]))
    assert latest_finding(HBA1C, results) is None  # 6.188238967081563 % on 2019-05-01 is 6.2 %: below 6.5
    hba1c["valueQuantity"]["value"] = 7.25

    finding = latest_finding(HBA1C, [hba1c])

    assert finding is not None and finding.values == (Decimal("7.3"),) and finding.unit == "%"
    assert finding_card(finding, env("p1")).summary.startswith("HbA1c 7.3 % on 2019-05-01 is high")


def test_a_value_is_compared_at_the_precision_it_is_shown() -> None:
    def bp(systolic: float) -> dict[str, Any]:
        def part(code: str, value: float) -> dict[str, Any]:
            quantity = {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
            return {"code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "valueQuantity": quantity}

        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "effectiveDateTime": "2026-12-01",
            "component": [part("8480-6", systolic), part("8462-4", 80.0)],
        }

    assert latest_finding(BLOOD_PRESSURE, [bp(139.4)]) is None  # shown as 139: not high
    shown = latest_finding(BLOOD_PRESSURE, [bp(139.5)])  # shown as 140: high, as the card says
    assert shown is not None and shown.values == (Decimal(140), Decimal(80))
