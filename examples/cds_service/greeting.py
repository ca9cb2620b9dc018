"""patient-view `patient-greeting`: the patient's name and age, an info card (no suggestion)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from examples.cds_service.cards import SOURCE, CallEnv, fit_summary, new_uuid
from examples.cds_service.errors import DataUnavailable
from examples.cds_service.fhir_data import DataSource
from examples.cds_service.knowledge import items
from examples.cds_service.schemas import Card

PATIENT = "Patient/{{context.patientId}}"
PREFETCH = {"patient": PATIENT}


def _name(patient: dict[str, Any]) -> str:
    for name in items(patient.get("name")):
        if not isinstance(name, dict):
            continue
        given = " ".join(g for g in items(name.get("given")) if isinstance(g, str))
        text = name.get("text") or f"{given} {name.get('family', '')}".strip()
        if text:
            return str(text)
    return "this patient"


def _age(patient: dict[str, Any], today: dt.date) -> int | None:
    try:
        born = dt.date.fromisoformat(str(patient["birthDate"])[:10])
    except (KeyError, ValueError):
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def greeting_card(patient: dict[str, Any], today: dt.date) -> Card:
    age = _age(patient, today)
    summary = f"Now seeing: {_name(patient)}" + (f", {age} years" if age is not None else "")
    return Card(uuid=new_uuid(), summary=fit_summary(summary), indicator="info", source=SOURCE)


async def patient_greeting(data: DataSource, env: CallEnv) -> list[Card]:
    patient = await data.read("patient", PATIENT)
    if patient is None:
        raise DataUnavailable("patient: no such Patient")
    return [greeting_card(patient, env.today)]
