"""patient-view `abnormal-results`: the latest HbA1c, LDL cholesterol and blood pressure, checked.

For each rule in knowledge.RESULT_RULES, the patient's latest final result (by effective date)
is compared with the rule's thresholds. A result at or above them gives one card: warning, or
critical at the higher threshold; the detail says when it was measured and whether a repeat is
overdue; the suggestion orders the follow-up test (a draft ServiceRequest the clinician can
accept). Results in other units are not compared: no guessing at conversions. Values are
rounded half-up to the precision the measure is reported to (ResultRule.decimals: whole mmHg and
mg/dL, HbA1c to 0.1 %) before they are compared and shown, with the Observation's own unit.

A deceased patient (Patient.deceased[x]) gets no card: nothing about a past result can be acted
on, and a repeat or an order would be care for someone who has died.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from examples.cds_service.cards import RESULT_OVERRIDES, SOURCE, CallEnv, effective_date, fit_summary, new_uuid
from examples.cds_service.errors import DataUnavailable
from examples.cds_service.fhir_data import DataSource
from examples.cds_service.greeting import PATIENT
from examples.cds_service.knowledge import LOINC, RESULT_RULES, ResultRule, codings, items
from examples.cds_service.schemas import Action, Card, Suggestion
from examples.cds_service.vital_status import deceased

LABS = "Observation?patient={{context.patientId}}&category=laboratory&_sort=-date&_count=100"
VITALS = "Observation?patient={{context.patientId}}&category=vital-signs&_sort=-date&_count=100"
PREFETCH = {"patient": PATIENT, "labs": LABS, "vitals": VITALS}
_PRINTED = {"mm[Hg]": "mmHg"}  # UCUM codes whose print symbol differs from the code
_FINAL = frozenset({"final", "amended", "corrected"})


@dataclass(frozen=True)
class Finding:
    rule: ResultRule
    observation: dict[str, Any]
    when: dt.date
    values: tuple[Decimal, ...]  # rounded to the rule's precision
    unit: str  # as the Observation prints it
    critical: bool


def _quantity(value: object, rule: ResultRule) -> tuple[Decimal, str] | None:
    """A valueQuantity in one of the rule's UCUM units: its value to the rule's precision, its unit as printed."""
    if not isinstance(value, dict):
        return None
    number, code, text = value.get("value"), value.get("code") or value.get("unit"), value.get("unit")
    if isinstance(number, bool) or not isinstance(number, int | float) or code not in rule.units:
        return None
    try:
        rounded = Decimal(repr(number)).quantize(Decimal(1).scaleb(-rule.decimals), rounding=ROUND_HALF_UP)
    except ArithmeticError:  # inf, nan: not a measurement
        return None
    printed = text if isinstance(text, str) and text and text != code else _PRINTED.get(str(code), str(code))
    return rounded, printed


def _values(rule: ResultRule, observation: dict[str, Any]) -> tuple[tuple[Decimal, ...], str] | None:
    if not rule.components:
        found = _quantity(observation.get("valueQuantity"), rule)
        return ((found[0],), found[1]) if found else None
    by_code: dict[str, tuple[Decimal, str]] = {}
    for component in items(observation.get("component")):
        quantity = _quantity(component.get("valueQuantity") if isinstance(component, dict) else None, rule)
        for coding in codings(component.get("code") if isinstance(component, dict) else None, LOINC):
            if quantity is not None:
                by_code[coding["code"]] = quantity
    if not all(code in by_code for code in rule.components):
        return None
    return tuple(by_code[c][0] for c in rule.components), by_code[rule.components[0]][1]


def latest_finding(rule: ResultRule, observations: list[dict[str, Any]]) -> Finding | None:
    """The rule's finding on the latest final result, or None when that result is below threshold."""
    candidates: list[tuple[dt.date, str, dict[str, Any], tuple[tuple[Decimal, ...], str]]] = []
    for obs in observations:
        when = effective_date(obs)
        measured = _values(rule, obs)
        if (
            obs.get("status") in _FINAL
            and when is not None
            and measured is not None
            and any(c["code"] in rule.codes for c in codings(obs.get("code"), LOINC))
        ):
            candidates.append((when, str(obs.get("effectiveDateTime") or ""), obs, measured))
    if not candidates:
        return None
    when, _, latest, (values, unit) = max(candidates, key=lambda c: (c[0], c[1]))
    if not any(v >= Decimal(repr(t)) for v, t in zip(values, rule.warning, strict=True)):
        return None
    critical = any(v >= Decimal(repr(t)) for v, t in zip(values, rule.critical, strict=True))
    return Finding(rule, latest, when, values, unit, critical)


def _shown(finding: Finding) -> str:
    return f"{'/'.join(str(v) for v in finding.values)} {finding.unit}"


def _threshold(rule: ResultRule, critical: bool) -> str:
    limits = "/".join(f"{t:g}" for t in (rule.critical if critical else rule.warning))
    return limits


def finding_card(finding: Finding, env: CallEnv) -> Card:
    rule, obs = finding.rule, finding.observation
    when = finding.when
    age = (env.today - when).days
    overdue = age > rule.repeat_days
    level = "very high" if finding.critical else "high"
    summary = f"{rule.name} {_shown(finding)} on {when.isoformat()} is {level}"
    summary += "; repeat overdue" if overdue else ""
    detail = (
        f"**Latest {rule.name}: {_shown(finding)}** on {when.isoformat()} ({age} days ago), "
        f"at or above the {'critical' if finding.critical else 'warning'} threshold "
        f"{_threshold(rule, finding.critical)}.\n\n{rule.basis}\n\n"
        + (
            f"No repeat result in the {rule.repeat_days} days since: a repeat is **overdue**."
            if overdue
            else f"A repeat is due within {rule.repeat_days} days of this result."
        )
    )
    service_request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {
            "coding": [
                {"system": rule.follow_up.system, "code": rule.follow_up.code, "display": rule.follow_up.display}
            ],
            "text": rule.follow_up.display,
        },
        "subject": {"reference": f"Patient/{env.patient_id}"},
        "note": [{"text": f"Suggested by the mockehr example CDS Service: {summary}."}],
    }
    if isinstance(obs.get("id"), str):
        service_request["reasonReference"] = [{"reference": f"Observation/{obs['id']}"}]
    if env.user_ref is not None:
        service_request["requester"] = {"reference": env.user_ref}
    suggestion = Suggestion(
        label=f"Order: {rule.follow_up.display}",
        uuid=new_uuid(),
        isRecommended=True,
        actions=[
            Action(
                type="create",
                description=f"Draft an order for {rule.follow_up.display}",
                resource=service_request,
            )
        ],
    )
    return Card(
        uuid=new_uuid(),
        summary=fit_summary(summary),
        detail=detail,
        indicator="critical" if finding.critical else "warning",
        source=SOURCE,
        suggestions=[suggestion],
        selectionBehavior="at-most-one",
        overrideReasons=list(RESULT_OVERRIDES),
    )


async def abnormal_results(data: DataSource, env: CallEnv) -> list[Card]:
    patient, labs, vitals = await asyncio.gather(
        data.read("patient", PATIENT), data.search("labs", LABS), data.search("vitals", VITALS)
    )
    if patient is None:
        raise DataUnavailable("patient: no such Patient")
    if deceased(patient) is not None:
        return []
    observations = labs + vitals
    findings = [f for f in (latest_finding(rule, observations) for rule in RESULT_RULES) if f is not None]
    findings.sort(key=lambda f: not f.critical)  # critical first, then the table's order
    return [finding_card(f, env) for f in findings]
