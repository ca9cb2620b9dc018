"""patient-view `patient-greeting`: the patient's name and age, an info card (no suggestion).

A deceased patient's record is described, not greeted: "Record of <name>, deceased <date>
aged <n>", the age counted to the death (vital_status)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from examples.cds_service.cards import SOURCE, CallEnv, fit_summary, new_uuid
from examples.cds_service.errors import DataUnavailable
from examples.cds_service.fhir_data import DataSource
from examples.cds_service.knowledge import items
from examples.cds_service.schemas import Card
from examples.cds_service.vital_status import age, deceased

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


def greeting_card(patient: dict[str, Any], today: dt.date) -> Card:
    years = age(patient, today)
    death = deceased(patient)
    if death is None:
        summary = f"Now seeing: {_name(patient)}" + (f", {years} years" if years is not None else "")
    else:
        summary = f"Record of {_name(patient)}, deceased" + (f" {death.on.isoformat()}" if death.on else "")
        summary += f" aged {years}" if years is not None else ""
    return Card(uuid=new_uuid(), summary=fit_summary(summary), indicator="info", source=SOURCE)


async def patient_greeting(data: DataSource, env: CallEnv) -> list[Card]:
    patient = await data.read("patient", PATIENT)
    if patient is None:
        raise DataUnavailable("patient: no such Patient")
    return [greeting_card(patient, env.today)]
