"""order-sign / order-select `medication-safety`: drug–allergy and duplicate-therapy checks.

Each draft MedicationRequest in `context.draftOrders` (for order-select: only those named in
`context.selections`) is checked against the patient's active AllergyIntolerances (same RxNorm
code, or same drug class by code or name, see knowledge.DRUG_CLASSES) and active
MedicationRequests (same RxNorm code or a shared ingredient). Each problem gives a card with a
suggestion to remove the draft (a `delete` of the draft order, §Suggestion / Action) and a
`smart` link to the example SMART app, whose appContext tells it which draft and which problem.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from examples.cds_service.cards import (
    ALLERGY_OVERRIDES,
    DUPLICATE_OVERRIDES,
    SOURCE,
    CallEnv,
    effective_date,
    fit_summary,
    new_uuid,
)
from examples.cds_service.errors import BadRequest
from examples.cds_service.fhir_data import DataSource
from examples.cds_service.knowledge import classes_of, display, ingredient_names, items, rxnorm_codes
from examples.cds_service.schemas import Action, Card, Coding, Link, Suggestion

ALLERGIES = "AllergyIntolerance?patient={{context.patientId}}"
MEDICATIONS = "MedicationRequest?patient={{context.patientId}}&status=active"
PREFETCH = {"allergies": ALLERGIES, "medications": MEDICATIONS}
_INACTIVE_ALLERGY = frozenset({"inactive", "resolved"})
_DOUBTFUL_ALLERGY = frozenset({"refuted", "entered-in-error"})


def _code(concept: object) -> str | None:
    if not isinstance(concept, dict):
        return None
    for coding in items(concept.get("coding")):
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def draft_medications(context: dict[str, Any], *, selected_only: bool) -> list[dict[str, Any]]:
    """The draft MedicationRequests this call is about (CDS Hooks order-sign / order-select context)."""
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("context.draftOrders must be a Bundle")
    drafts = [
        e["resource"]
        for e in items(bundle.get("entry"))
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") == "MedicationRequest"
    ]
    if not selected_only:
        return drafts
    selections = context.get("selections")
    if not isinstance(selections, list) or not all(isinstance(s, str) for s in selections):
        raise BadRequest("context.selections must be a list of references")
    return [d for d in drafts if f"MedicationRequest/{d.get('id')}" in selections]


def active_allergies(allergies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        a
        for a in allergies
        if _code(a.get("clinicalStatus")) not in _INACTIVE_ALLERGY
        and _code(a.get("verificationStatus")) not in _DOUBTFUL_ALLERGY
    ]


def _medication(resource: dict[str, Any]) -> object:
    return resource.get("medicationCodeableConcept")


def _remove(draft: dict[str, Any], name: str) -> list[Suggestion]:
    if not isinstance(draft.get("id"), str):
        return []  # nothing to point a delete at
    return [
        Suggestion(
            label=f"Remove the draft order for {name}",
            uuid=new_uuid(),
            isRecommended=True,
            actions=[
                Action(
                    type="delete",
                    description=f"Remove the draft order for {name}",
                    resourceId=f"MedicationRequest/{draft['id']}",
                )
            ],
        )
    ]


def _app_link(env: CallEnv, draft: dict[str, Any], issue: str) -> Link:
    context = {"patient": env.patient_id, "issue": issue}
    if isinstance(draft.get("id"), str):
        context["draftOrder"] = f"MedicationRequest/{draft['id']}"
    return Link(
        label="Review medications in the example SMART app",
        url=env.smart_launch_url,
        type="smart",
        appContext=json.dumps(context, separators=(",", ":")),
    )


def _card(
    env: CallEnv,
    draft: dict[str, Any],
    issue: str,
    summary: str,
    detail: str,
    indicator: str,
    overrides: tuple[Coding, ...],
) -> Card:
    suggestions = _remove(draft, display(_medication(draft)))
    return Card.model_validate(
        {
            "uuid": new_uuid(),
            "summary": fit_summary(summary),
            "detail": detail,
            "indicator": indicator,
            "source": SOURCE,
            "suggestions": suggestions or None,
            "selectionBehavior": "at-most-one" if suggestions else None,
            "overrideReasons": list(overrides),
            "links": [_app_link(env, draft, issue)],
        }
    )


def allergy_cards(env: CallEnv, draft: dict[str, Any], allergies: list[dict[str, Any]]) -> list[Card]:
    medication = _medication(draft)
    drug, drug_codes, drug_classes = display(medication), rxnorm_codes(medication), classes_of(medication)
    cards = []
    for allergy in allergies:
        allergen = allergy.get("code")
        same_code = bool(drug_codes & rxnorm_codes(allergen))
        common = sorted(drug_classes & classes_of(allergen))
        if not same_code and not common:
            continue
        why = "the same drug" if same_code else f"in the same class ({', '.join(common)})"
        severe = allergy.get("criticality") == "high"
        reactions = [
            f"{display(m)} ({r.get('severity', 'severity unknown')})"
            for r in items(allergy.get("reaction"))
            if isinstance(r, dict)
            for m in items(r.get("manifestation"))
        ]
        detail = (
            f"The draft order for **{drug}** is {why} as a recorded allergy: **{display(allergen)}**"
            f" (criticality {allergy.get('criticality', 'unknown')}).\n\n"
            + (f"Recorded reactions: {'; '.join(reactions)}.\n\n" if reactions else "")
            + "Remove the draft, or override with a reason if the patient is known to tolerate it."
        )
        summary = f"Allergy to {display(allergen)}: {drug} is {why}"
        cards.append(
            _card(env, draft, "drug-allergy", summary, detail, "critical" if severe else "warning", ALLERGY_OVERRIDES)
        )
    return cards


def duplicate_cards(env: CallEnv, draft: dict[str, Any], active: list[dict[str, Any]]) -> list[Card]:
    medication = _medication(draft)
    drug, codes, ingredients = display(medication), rxnorm_codes(medication), ingredient_names(medication)
    cards = []
    for order in active:
        if order.get("id") == draft.get("id") or order.get("status") != "active":
            continue
        existing = _medication(order)
        same_code = bool(codes & rxnorm_codes(existing))
        common = sorted(ingredients & ingredient_names(existing))
        if not same_code and not common:
            continue
        since = effective_date(order)
        what = "the same medication" if same_code else f"the same ingredient ({', '.join(common)})"
        summary = f"Duplicate therapy: {display(existing)} is already active"
        detail = (
            f"The draft order for **{drug}** has {what} as an active order: **{display(existing)}**"
            + (f", ordered {since.isoformat()}" if since else "")
            + ".\n\nRemove the draft, or override if this is an intended dose change or combination."
        )
        cards.append(_card(env, draft, "duplicate-therapy", summary, detail, "warning", DUPLICATE_OVERRIDES))
    return cards


async def medication_safety(
    data: DataSource, env: CallEnv, context: dict[str, Any], *, selected_only: bool
) -> list[Card]:
    drafts = draft_medications(context, selected_only=selected_only)
    if not drafts:
        return []  # nothing to check: no data needed, no 412
    allergies, active = await asyncio.gather(
        data.search("allergies", ALLERGIES), data.search("medications", MEDICATIONS)
    )
    allergies = active_allergies(allergies)
    cards: list[Card] = []
    for draft in drafts:
        cards += allergy_cards(env, draft, allergies)
        cards += duplicate_cards(env, draft, active)
    cards.sort(key=lambda c: c.indicator != "critical")
    return cards
