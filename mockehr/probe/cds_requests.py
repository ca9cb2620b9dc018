"""Real CDS Hooks requests for a discovered service: context for its hook, prefetch, feedback.

CDS Hooks 2.0.1 §Calling a CDS Service: `hook`, `hookInstance` (a new UUID per call) and the
hook's context, about a synthetic patient. No `fhirAuthorization` and no `fhirServer` are sent:
the probe has no FHIR server to lend, and a service must not need one to authenticate its caller.
Prefetch templates are answered from synthetic resources (§Prefetch: a read that finds nothing is
`null`, a search that finds nothing an empty searchset Bundle), so a service that needs its
prefetch gets it and the positive control shows what an accepted request looks like.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

PATIENT_ID = "probe-patient-1"
PRACTITIONER_ID = "probe-practitioner-1"
ENCOUNTER_ID = "probe-encounter-1"
USER = f"Practitioner/{PRACTITIONER_ID}"

SYNTHETIC: dict[str, dict[str, Any]] = {
    f"Patient/{PATIENT_ID}": {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "name": [{"given": ["Probe"], "family": "Synthetic"}],
        "gender": "unknown",
        "birthDate": "1970-01-01",
    },
    USER: {"resourceType": "Practitioner", "id": PRACTITIONER_ID, "name": [{"family": "Probe"}]},
    f"Encounter/{ENCOUNTER_ID}": {
        "resourceType": "Encounter",
        "id": ENCOUNTER_ID,
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    },
}

_TOKENS = {
    "context.patientId": PATIENT_ID,
    "context.userId": USER,
    "context.encounterId": ENCOUNTER_ID,
    "userPractitionerId": PRACTITIONER_ID,
    "userPatientId": PATIENT_ID,
}
_TOKEN = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")
_READ = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")


def _empty_bundle() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": []}


def hook_context(hook: str) -> dict[str, Any]:
    """The context of `hook` (CDS Hooks hook definitions) about the synthetic patient."""
    base: dict[str, Any] = {"userId": USER, "patientId": PATIENT_ID}
    if hook in ("encounter-start", "encounter-discharge"):
        return {**base, "encounterId": ENCOUNTER_ID}
    if hook == "order-select":
        return {**base, "selections": [], "draftOrders": _empty_bundle()}
    if hook == "order-sign":
        return {**base, "draftOrders": _empty_bundle()}
    if hook == "order-dispatch":
        return {"patientId": PATIENT_ID, "dispatchedOrders": [], "performer": USER}
    if hook == "appointment-book":
        return {**base, "appointments": _empty_bundle()}
    return base  # patient-view and hooks this probe does not know


def prefetch(templates: object) -> dict[str, Any]:
    """Answers to the service's prefetch templates from the synthetic resources."""
    if not isinstance(templates, dict):
        return {}
    answers: dict[str, Any] = {}
    for key, template in templates.items():
        if not isinstance(key, str) or not isinstance(template, str):
            continue
        query = _TOKEN.sub(lambda m: _TOKENS.get(m.group(1), m.group(0)), template)
        if "{{" in query:
            continue  # not satisfiable: the key is omitted (§Prefetch template)
        if _READ.match(query):
            answers[key] = SYNTHETIC.get(query)  # null when the read finds nothing
        else:
            answers[key] = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
    return answers


def service_request(service: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": str(service.get("hook", "")),
        "hookInstance": str(uuid.uuid4()),
        "context": hook_context(str(service.get("hook", ""))),
    }
    answers = prefetch(service.get("prefetch"))
    if answers:
        body["prefetch"] = answers
    return body


def feedback_request(card_uuid: str, now: float) -> dict[str, Any]:
    """Feedback (CDS Hooks 2.0 §Feedback) that the card was overridden, without a reason."""
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"feedback": [{"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": stamp}]}
