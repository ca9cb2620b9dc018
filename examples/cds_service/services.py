"""The services this example CDS Service offers (CDS Hooks 2.0 §Discovery) and their logic."""

from __future__ import annotations

import datetime as dt
from typing import Any

PATIENT_GREETING: dict[str, Any] = {
    "hook": "patient-view",
    "id": "patient-greeting",
    "title": "Patient greeting",
    "description": "Shows the patient's name and age, read from prefetch.",
    "prefetch": {"patient": "Patient/{{context.patientId}}"},
}

SERVICES: dict[str, dict[str, Any]] = {PATIENT_GREETING["id"]: PATIENT_GREETING}


def _name(patient: dict[str, Any]) -> str:
    for name in patient.get("name") or []:
        given = " ".join(name.get("given") or [])
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


def patient_greeting_cards(patient: dict[str, Any], today: dt.date) -> list[dict[str, Any]]:
    age = _age(patient, today)
    summary = f"Now seeing: {_name(patient)}" + (f", {age} years" if age is not None else "")
    return [
        {
            "uuid": "8b1f1d0e-6f0e-4d6b-9a44-3f0c1c0a0001",
            "summary": summary[:139],
            "indicator": "info",
            "source": {"label": "mockehr example CDS Service"},
        }
    ]
