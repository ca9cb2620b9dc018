"""What the UI reads from the FHIR server, always with the signed-in user's own token.

The FHIR server decides what the user may see (`user/` scopes: the practitioner's panel and
care-team patients). A patient outside it answers 404 exactly like a missing one, and then the
UI shows nothing of it: the chart is built only after the Patient read succeeds, and every
search is restricted by the server to the same compartment anyway.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
FHIR_JSON = "application/fhir+json"


class FhirUnavailable(Exception):
    """The FHIR server could not answer (network, 5xx, an unexpected status)."""


class FhirUnauthorized(Exception):
    """The FHIR server refused the user's token (revoked, or the user's grant ended): the session
    is over."""


def display_name(resource: Mapping[str, Any]) -> str:
    names = resource.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        name = names[0]
        if isinstance(name.get("text"), str) and name["text"]:
            return str(name["text"])
        given = " ".join(g for g in name.get("given", []) if isinstance(g, str))
        family = name.get("family") if isinstance(name.get("family"), str) else ""
        if f"{given}{family}".strip():
            return f"{given} {family}".strip()
    return f"{resource.get('resourceType', 'Resource')}/{resource.get('id')}"


def concept_text(concept: object) -> str:
    """A CodeableConcept as words: its text, else its first coding's display, else its code."""
    if not isinstance(concept, dict):
        return ""
    if isinstance(concept.get("text"), str) and concept["text"]:
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict):
            for key in ("display", "code"):
                if isinstance(coding.get(key), str) and coding[key]:
                    return str(coding[key])
    return ""


def _first_str(resource: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = resource.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _quantity(observation: Mapping[str, Any]) -> str:
    value = observation.get("valueQuantity")
    if isinstance(value, dict) and isinstance(value.get("value"), int | float):
        unit = value.get("unit") or value.get("code") or ""
        return f"{value['value']:g} {unit}".strip()
    if isinstance(observation.get("valueString"), str):
        return str(observation["valueString"])
    concept = concept_text(observation.get("valueCodeableConcept"))
    if concept:
        return concept
    parts = []
    for component in observation.get("component") or []:
        if isinstance(component, dict):
            parts.append(f"{concept_text(component.get('code'))}: {_quantity(component)}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Row:
    """One line of a chart section: what, a detail, and when."""

    id: str
    text: str
    detail: str = ""
    date: str = ""


@dataclass
class Chart:
    patient_id: str
    name: str
    gender: str
    birth_date: str
    identifiers: list[str] = field(default_factory=list)
    problems: list[Row] = field(default_factory=list)
    medications: list[Row] = field(default_factory=list)
    allergies: list[Row] = field(default_factory=list)
    labs: list[Row] = field(default_factory=list)
    vitals: list[Row] = field(default_factory=list)
    encounters: list[Row] = field(default_factory=list)
    orders: list[Row] = field(default_factory=list)

    @property
    def latest_encounter(self) -> str:
        return self.encounters[0].id if self.encounters else ""

    @property
    def open_encounter(self) -> str:
        """The encounter in progress (FHIR R4 Encounter.status), if any: an app's launch context."""
        return next((e.id for e in self.encounters if e.detail == "in-progress"), "")


@dataclass(frozen=True)
class PatientSummary:
    id: str
    name: str
    gender: str
    birth_date: str


class FhirReader:
    def __init__(self, http: httpx.AsyncClient, base: str, token: str) -> None:
        self.http = http
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}", "Accept": FHIR_JSON}

    async def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        try:
            response = await self.http.get(f"{self.base}/{path}", params=params, headers=self.headers)
        except httpx.HTTPError as exc:
            raise FhirUnavailable(type(exc).__name__) from None
        if response.status_code in (404, 410):
            return None
        if response.status_code == 401:
            raise FhirUnauthorized
        if response.status_code != 200:
            raise FhirUnavailable(f"FHIR server answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise FhirUnavailable("FHIR server answered with something that is not JSON") from None
        return body if isinstance(body, dict) else None

    async def _search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        bundle = await self._get(resource_type, params)
        found = []
        for entry in (bundle or {}).get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == resource_type:
                found.append(resource)
        return found

    async def patients(self, count: int = 100) -> list[PatientSummary]:
        found = await self._search("Patient", {"_count": str(count), "_sort": "family"})
        return [
            PatientSummary(
                id=str(p.get("id")),
                name=display_name(p),
                gender=_first_str(p, "gender"),
                birth_date=_first_str(p, "birthDate"),
            )
            for p in found
            if isinstance(p.get("id"), str)
        ]

    async def chart_visible(self, patient_id: str) -> bool:
        if not FHIR_ID.fullmatch(patient_id):
            return False
        patient = await self._get(f"Patient/{patient_id}")
        return patient is not None and patient.get("id") == patient_id

    async def readable(self, reference: str) -> bool:
        """Whether the user may read this resource (`Type/id`)."""
        kind, _, rid = reference.partition("/")
        if not FHIR_ID.fullmatch(rid):
            return False
        found = await self._get(f"{kind}/{rid}")
        return found is not None and found.get("resourceType") == kind and found.get("id") == rid

    async def encounter_of(self, patient_id: str, encounter_id: str) -> bool:
        """Whether the user may see this Encounter and it is this patient's."""
        if not FHIR_ID.fullmatch(encounter_id):
            return False
        encounter = await self._get(f"Encounter/{encounter_id}")
        subject = (encounter or {}).get("subject")
        return isinstance(subject, dict) and subject.get("reference") == f"Patient/{patient_id}"

    async def chart(self, patient_id: str) -> Chart | None:
        """The chart, or None when the user may not see this patient (or it does not exist)."""
        if not FHIR_ID.fullmatch(patient_id):
            return None
        patient = await self._get(f"Patient/{patient_id}")
        if patient is None or patient.get("resourceType") != "Patient" or patient.get("id") != patient_id:
            return None
        base = {"patient": patient_id}
        conditions, meds, allergies, labs, vitals, encounters, services = await asyncio.gather(
            self._search("Condition", {**base, "_count": "50", "_sort": "-recorded-date"}),
            self._search("MedicationRequest", {**base, "_count": "50", "_sort": "-authoredon"}),
            self._search("AllergyIntolerance", {**base, "_count": "50"}),
            self._search("Observation", {**base, "category": "laboratory", "_count": "10", "_sort": "-date"}),
            self._search("Observation", {**base, "category": "vital-signs", "_count": "10", "_sort": "-date"}),
            self._search("Encounter", {**base, "_count": "10", "_sort": "-date"}),
            self._search("ServiceRequest", {**base, "_count": "20", "_sort": "-authored"}),
        )
        identifiers = [
            f"{i.get('system', '')}|{i.get('value', '')}"
            for i in patient.get("identifier") or []
            if isinstance(i, dict) and isinstance(i.get("value"), str)
        ][:3]
        return Chart(
            patient_id=patient_id,
            name=display_name(patient),
            gender=_first_str(patient, "gender"),
            birth_date=_first_str(patient, "birthDate"),
            identifiers=identifiers,
            problems=[
                Row(
                    str(c.get("id")),
                    concept_text(c.get("code")),
                    concept_text(c.get("clinicalStatus")),
                    _first_str(c, "onsetDateTime", "recordedDate"),
                )
                for c in conditions
            ],
            medications=[
                Row(
                    str(m.get("id")),
                    concept_text(m.get("medicationCodeableConcept")) or "medication",
                    _first_str(m, "status"),
                    _first_str(m, "authoredOn"),
                )
                for m in meds
            ],
            allergies=[
                Row(
                    str(a.get("id")),
                    concept_text(a.get("code")),
                    concept_text(a.get("clinicalStatus")),
                    _first_str(a, "recordedDate", "onsetDateTime"),
                )
                for a in allergies
            ],
            labs=[
                Row(str(o.get("id")), concept_text(o.get("code")), _quantity(o), _first_str(o, "effectiveDateTime"))
                for o in labs
            ],
            vitals=[
                Row(str(o.get("id")), concept_text(o.get("code")), _quantity(o), _first_str(o, "effectiveDateTime"))
                for o in vitals
            ],
            encounters=[
                Row(
                    str(e.get("id")),
                    concept_text((e.get("type") or [{}])[0]) or _first_str(e.get("class") or {}, "display", "code"),
                    _first_str(e, "status"),
                    _first_str(e.get("period") or {}, "start"),
                )
                for e in encounters
            ],
            orders=[
                Row(str(s.get("id")), concept_text(s.get("code")), _first_str(s, "status"), _first_str(s, "authoredOn"))
                for s in services
            ],
        )
