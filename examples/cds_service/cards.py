"""What every card of this service shares: its source, uuids, summaries that fit, override reasons."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from examples.cds_service.schemas import Coding, Source

SOURCE = Source(label="mockehr example CDS Service")
SUMMARY_MAX = 139  # CDS Hooks 2.0 §Card Attributes: summary "<140 characters"
OVERRIDE_SYSTEM = "https://mockehr.dev/fhir/CodeSystem/cds-override-reason"


def new_uuid() -> str:
    """Card and suggestion uuids: fresh per response, so feedback names exactly one card."""
    return str(uuid.uuid4())


def fit_summary(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def _reason(code: str, text: str) -> Coding:
    return Coding(system=OVERRIDE_SYSTEM, code=code, display=text)


RESULT_OVERRIDES = (
    _reason("already-addressed", "Already addressed"),
    _reason("patient-declined", "Patient declined"),
    _reason("not-clinically-relevant", "Not clinically relevant for this patient"),
)
ALLERGY_OVERRIDES = (
    _reason("tolerated-before", "Patient has tolerated this drug before"),
    _reason("benefit-outweighs-risk", "Benefit outweighs the risk; will monitor"),
    _reason("allergy-record-incorrect", "The allergy record is incorrect"),
)
DUPLICATE_OVERRIDES = (
    _reason("intended-combination", "Intended: dose change or combination therapy"),
    _reason("replaces-existing", "This order replaces the active one, which will be stopped"),
)


@dataclass(frozen=True)
class CallEnv:
    """What a service's logic may use besides its data: the day, who and for whom, where apps live."""

    today: dt.date
    patient_id: str
    user_ref: str | None  # "Practitioner/<id>" when context.userId names one
    smart_launch_url: str


def reference(rtype: str, rid: str) -> dict[str, Any]:
    return {"reference": f"{rtype}/{rid}"}


def effective_date(resource: dict[str, Any]) -> dt.date | None:
    """The clinically relevant date of an Observation or a MedicationRequest, if it has one."""
    for raw in (
        resource.get("effectiveDateTime"),
        period.get("start") if isinstance(period := resource.get("effectivePeriod"), dict) else None,
        resource.get("issued"),
        resource.get("authoredOn"),
    ):
        if isinstance(raw, str) and len(raw) >= 10:
            try:
                return dt.date.fromisoformat(raw[:10])
            except ValueError:
                continue
    return None
