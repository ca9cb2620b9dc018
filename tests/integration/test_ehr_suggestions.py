"""Acting on cards: a suggestion applied as one FHIR transaction as the user inside the patient's
compartment, `accepted`/`overridden` feedback with a fresh JWT, forged or repeated decisions
refused, and systemActions applied only for a service allowed to."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select

from ehr.models import CdsCardOutcomeRow
from ehr.principal import Principal
from ehr.state import ehr_state
from tests.integration.authharness import claims_of
from tests.integration.ehrharness import (
    DISCOVERY,
    CdsDouble,
    EhrHarness,
    Router,
    card,
    ehr_harness,
    greeting_service,
)

REASONS = [
    {"system": "http://example.org/reasons", "code": "patient-declined", "display": "Patient declined"},
    {"system": "http://example.org/reasons", "code": "not-relevant", "display": "Not relevant"},
]


def _observation(patient: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _suggesting(body: dict[str, Any]) -> Response:
    """Suggests one Observation for the patient in context, another for the patient named by
    `extension.other` (a compartment escape), and asks for a systemAction."""
    patient = body["context"]["patientId"]
    other = (body.get("extension") or {}).get("other", patient)
    actions = [{"type": "create", "description": "record", "resource": _observation(patient, "follow-up noted")}]
    escape = [
        {"type": "create", "description": "ok", "resource": _observation(patient, "inside")},
        {"type": "create", "description": "escape", "resource": _observation(other, "outside")},
    ]
    return JSONResponse(
        {
            "cards": [
                card(
                    "card-1",
                    selectionBehavior="at-most-one",
                    suggestions=[
                        {"label": "Record it", "uuid": "sugg-1", "actions": actions},
                        {"label": "Escape", "uuid": "sugg-escape", "actions": escape},
                    ],
                    overrideReasons=REASONS,
                )
            ],
            "systemActions": [
                {"type": "create", "description": "audit", "resource": _observation(patient, "system action")}
            ],
        }
    )


@pytest.fixture
def cds() -> CdsDouble:
    return CdsDouble(services=[greeting_service()], answers={"greeting": _suggesting})


@pytest.fixture
async def h(h: EhrHarness) -> EhrHarness:
    """The shared harness with the service added."""
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    return h


async def _fire(h: EhrHarness, practitioner: int = 0) -> str:
    response = await h.fire(userId=h.fhir.practitioner(practitioner), patientId=h.fhir.patient_of(practitioner))
    assert response.status_code == 200, response.text
    assert response.json()["services"][0]["status"] == "ok", response.json()
    return str(response.json()["hookInstance"])


async def _observations(h: EhrHarness, patient: str, text: str) -> list[dict[str, Any]]:
    bundle = (await h.fhir_read("Observation", subject=f"Patient/{patient}", _count=200)).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"].get("code", {}).get("text") == text]


async def _accept(h: EhrHarness, hook_instance: str, suggestion: str = "sugg-1", **extra: Any) -> Any:
    body = {
        "hookInstance": hook_instance,
        "serviceId": "greeting",
        "cardUuid": "card-1",
        "suggestionUuid": suggestion,
        **extra,
    }
    return await h.ehr.post("/api/suggestions/accept", json=body, headers=h.admin)


async def test_accepting_a_suggestion_applies_it_as_the_user_and_sends_accepted_feedback(h: EhrHarness) -> None:
    hook_instance = await _fire(h)
    response = await _accept(h, hook_instance)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outcome"] == "accepted" and body["feedback"]["delivered"] is True
    assert [e["status"][:3] for e in body["transaction"]] == ["201"]
    (created,) = await _observations(h, h.fhir.patient_of(0), "follow-up noted")
    assert body["transaction"][0]["location"].startswith(f"Observation/{created['id']}")

    (feedback,) = h.cds.calls("/cds-services/greeting/feedback")
    claims = claims_of(feedback.headers["authorization"].split()[1])
    assert claims["aud"] == f"{DISCOVERY}/greeting/feedback"
    (entry,) = feedback.body["feedback"]
    assert (entry["card"], entry["outcome"], entry["acceptedSuggestions"]) == ("card-1", "accepted", [{"id": "sugg-1"}])
    assert entry["outcomeTimestamp"].endswith("Z")


async def test_a_card_is_decided_once(h: EhrHarness) -> None:
    hook_instance = await _fire(h)
    assert (await _accept(h, hook_instance)).status_code == 200
    again = await _accept(h, hook_instance)
    assert again.status_code == 409 and again.json()["error"] == "conflict"
    override = await h.ehr.post(
        "/api/feedback",
        json={"hookInstance": hook_instance, "serviceId": "greeting", "cardUuid": "card-1", "outcome": "overridden"},
        headers=h.admin,
    )
    assert override.status_code == 409
    assert len(await _observations(h, h.fhir.patient_of(0), "follow-up noted")) == 1
    assert len(h.cds.calls("/cds-services/greeting/feedback")) == 1


async def test_a_disabled_service_gets_no_feedback(h: EhrHarness) -> None:
    hook_instance = await _fire(h)
    assert (await h.ehr.post("/api/services/greeting/disable", headers=h.admin)).status_code == 200
    response = await _accept(h, hook_instance)
    assert response.status_code == 200, response.text
    assert response.json()["feedback"] == {
        "status": None,
        "error": "the service is not enabled; no feedback was sent",
        "delivered": False,
    }
    assert h.cds.calls("/cds-services/greeting/feedback") == []


async def test_a_forged_card_or_suggestion_is_refused(h: EhrHarness) -> None:
    hook_instance = await _fire(h)
    cases = [
        {"suggestionUuid": "sugg-forged"},
        {"cardUuid": "card-forged"},
        {"serviceId": "other-service"},
        {"hookInstance": "00000000-0000-4000-8000-000000000000"},
    ]
    for change in cases:
        body = {
            "hookInstance": hook_instance,
            "serviceId": "greeting",
            "cardUuid": "card-1",
            "suggestionUuid": "sugg-1",
        }
        response = await h.ehr.post("/api/suggestions/accept", json={**body, **change}, headers=h.admin)
        assert response.status_code == 404, change
    assert await _observations(h, h.fhir.patient_of(0), "follow-up noted") == []
    assert h.cds.calls("/cds-services/greeting/feedback") == []


async def test_another_users_exchange_cannot_be_acted_on(h: EhrHarness) -> None:
    hook_instance = await _fire(h, practitioner=1)
    intruder = h.fhir.practitioner(0)

    async def resolver(_request: Request) -> Principal:
        return Principal(user_ref=intruder, is_admin=False, session_token=None)

    ehr_state(h.ehr_app).session_resolver = resolver
    body = {"hookInstance": hook_instance, "serviceId": "greeting", "cardUuid": "card-1", "suggestionUuid": "sugg-1"}
    assert (await h.ehr.post("/api/suggestions/accept", json=body)).status_code == 404
    assert (await _accept(h, hook_instance, userId=intruder)).status_code == 404  # admin naming someone else
    assert await _observations(h, h.fhir.patient_of(1), "follow-up noted") == []


async def test_a_suggestion_writing_outside_the_patients_compartment_is_refused_all_or_nothing(
    h: EhrHarness,
) -> None:
    # The service names another patient of the same user: still outside this call's compartment.
    other = h.fhir.patient_of(0, 1)
    h.cds.answers["greeting"] = lambda body: _suggesting({**body, "extension": {"other": other}})
    hook_instance = await _fire(h)
    response = await _accept(h, hook_instance, suggestion="sugg-escape")
    assert response.status_code in (403, 502), response.text
    assert response.json()["message"].startswith("the FHIR server refused the transaction")
    assert await _observations(h, h.fhir.patient_of(0), "inside") == []  # nothing of the transaction
    assert await _observations(h, other, "outside") == []
    assert h.cds.calls("/cds-services/greeting/feedback") == []
    # The refused decision is not recorded: the user may still choose.
    assert (await _accept(h, hook_instance)).status_code == 200


async def test_overriding_sends_the_offered_reason_and_the_comment(h: EhrHarness) -> None:
    hook_instance = await _fire(h)
    base = {"hookInstance": hook_instance, "serviceId": "greeting", "cardUuid": "card-1", "outcome": "overridden"}
    invented = await h.ehr.post(
        "/api/feedback",
        json={**base, "overrideReason": {"system": "http://example.org/reasons", "code": "made-up"}},
        headers=h.admin,
    )
    assert invented.status_code == 400
    response = await h.ehr.post(
        "/api/feedback",
        json={
            **base,
            "overrideReason": {"system": "http://example.org/reasons", "code": "patient-declined"},
            "userComment": "Discussed today",
        },
        headers=h.admin,
    )
    assert response.status_code == 200, response.text
    (feedback,) = h.cds.calls("/cds-services/greeting/feedback")
    (entry,) = feedback.body["feedback"]
    assert entry["outcome"] == "overridden" and "acceptedSuggestions" not in entry
    assert entry["overrideReason"] == {"reason": REASONS[0], "userComment": "Discussed today"}
    accepted = await h.ehr.post("/api/feedback", json={**base, "outcome": "accepted"}, headers=h.admin)
    assert accepted.status_code == 400  # acceptance goes through /api/suggestions/accept


async def _recorded(h: EhrHarness, hook_instance: str) -> dict[str, Any]:
    response = await h.ehr.get(f"/api/exchanges/{hook_instance}", headers=h.admin)
    assert response.status_code == 200, response.text
    (service,) = response.json()["services"]
    return dict(service)


async def test_system_actions_are_applied_only_for_a_service_allowed_to_and_the_record_shows_what_was_written(
    h: EhrHarness,
) -> None:
    patient = h.fhir.patient_of(0)
    response = await h.fire(userId=h.fhir.practitioner(0), patientId=patient)
    result = response.json()["services"][0]
    refused = {"applied": False, "reason": "systemActions are not allowed for this service"}
    assert "systemActions" not in result and result["systemActionsResult"] == refused
    assert (await _recorded(h, response.json()["hookInstance"]))["systemActionsResult"] == refused
    assert await _observations(h, patient, "system action") == []

    patched = await h.ehr.patch("/api/services/greeting", json={"allowSystemActions": True}, headers=h.admin)
    assert patched.status_code == 200
    response = await h.fire(userId=h.fhir.practitioner(0), patientId=patient)
    applied = response.json()["services"][0]["systemActionsResult"]
    (created,) = await _observations(h, patient, "system action")
    assert created["subject"] == {"reference": f"Patient/{patient}"}
    assert applied["applied"] is True
    (entry,) = applied["transaction"]
    assert entry["status"].startswith("201") and entry["location"].startswith(f"Observation/{created['id']}/")
    assert (await _recorded(h, response.json()["hookInstance"]))["systemActionsResult"] == applied


async def test_a_system_action_the_fhir_server_refuses_is_recorded_with_why(h: EhrHarness) -> None:
    # An allowed service asks for a write in another patient's compartment: refused, all or nothing.
    patient, other = h.fhir.patient_of(0), h.fhir.patient_of(0, 1)
    h.cds.answers["greeting"] = lambda _body: JSONResponse(
        {
            "cards": [],
            "systemActions": [
                {"type": "create", "description": "in", "resource": _observation(patient, "system inside")},
                {"type": "create", "description": "out", "resource": _observation(other, "system outside")},
            ],
        }
    )
    assert (await h.ehr.patch("/api/services/greeting", json={"allowSystemActions": True}, headers=h.admin)).is_success
    response = await h.fire(userId=h.fhir.practitioner(0), patientId=patient)
    shown = response.json()["services"][0]["systemActionsResult"]
    assert shown["applied"] is False and shown["reason"].startswith("the FHIR server refused the transaction")
    recorded = await _recorded(h, response.json()["hookInstance"])
    assert recorded["systemActionsResult"] == shown
    assert await _observations(h, patient, "system inside") == []
    assert await _observations(h, other, "system outside") == []


async def test_a_transaction_whose_answer_is_lost_is_never_applied_twice(
    h: EhrHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The FHIR server commits the transaction, then the connection drops before its answer
    # arrives. Releasing the card would let the user (or a retrying client) apply it again.
    hook_instance = await _fire(h)
    forward = Router.handle_async_request

    async def commit_then_drop(self: Router, request: httpx.Request) -> httpx.Response:
        response = await forward(self, request)
        if request.url.host == "fhir.test" and request.method == "POST" and request.url.path == "/fhir":
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    monkeypatch.setattr(Router, "handle_async_request", commit_then_drop)
    lost = await _accept(h, hook_instance)
    assert lost.status_code == 502 and lost.json()["error"] == "upstream_error"
    assert "may have been applied" in lost.json()["message"]
    monkeypatch.undo()
    again = await _accept(h, hook_instance)
    assert again.status_code == 409, again.text
    assert len(await _observations(h, h.fhir.patient_of(0), "follow-up noted")) == 1
    assert h.cds.calls("/cds-services/greeting/feedback") == []  # no outcome claimed that we lack


async def test_a_suggestion_cannot_update_or_delete_another_patients_resource_by_id(h: EhrHarness) -> None:
    # The service names a resource of another patient of the same user by id: the FHIR server
    # treats it as absent from this patient's compartment, and nothing changes.
    other = h.fhir.patient_of(0, 1)
    token = await h.fhir.token("system/*.cruds")
    created = await h.fhir.client.post(
        "/fhir/Observation", json=_observation(other, "theirs"), headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201, created.text
    target = created.json()
    hijacked = {**target, "subject": {"reference": f"Patient/{h.fhir.patient_of(0)}"}, "code": {"text": "moved"}}
    update = [{"type": "update", "description": "move", "resource": hijacked}]
    delete = [{"type": "delete", "description": "erase", "resourceId": [f"Observation/{target['id']}"]}]
    h.cds.answers["greeting"] = lambda _body: JSONResponse(
        {
            "cards": [
                card(
                    "card-1",
                    selectionBehavior="at-most-one",
                    suggestions=[
                        {"label": "Move", "uuid": "sugg-update", "actions": update},
                        {"label": "Erase", "uuid": "sugg-delete", "actions": delete},
                    ],
                )
            ]
        }
    )
    for suggestion in ("sugg-update", "sugg-delete"):
        hook_instance = await _fire(h)
        response = await _accept(h, hook_instance, suggestion=suggestion)
        if response.status_code == 200:  # a delete of what this token cannot see answers like success
            assert suggestion == "sugg-delete"
        else:
            assert response.status_code in (403, 404, 502), response.text
    (still,) = await _observations(h, other, "theirs")
    assert still["meta"]["versionId"] == target["meta"]["versionId"]
    assert await _observations(h, h.fhir.patient_of(0), "moved") == []


def _draft(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": f"draft-{uuid.uuid4()}",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "warfarin 5 mg"},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _removing(stored: str | None) -> Callable[[dict[str, Any]], Response]:
    """An order-sign service suggesting to remove the draft it was sent (and `stored`, a real one)."""

    def answer(body: dict[str, Any]) -> Response:
        draft = body["context"]["draftOrders"]["entry"][0]["resource"]
        targets = [f"MedicationRequest/{draft['id']}", *([stored] if stored else [])]
        suggestion = {
            "label": "Remove",
            "uuid": "sugg-remove",
            "actions": [{"type": "delete", "description": "remove", "resourceId": targets}],
        }
        return JSONResponse({"cards": [card("card-1", suggestions=[suggestion])]})

    return answer


@pytest.fixture
async def orders(tmp_path: Path, database_url: str) -> AsyncIterator[EhrHarness]:
    cds = CdsDouble(services=[greeting_service("dup", hook="order-sign")])
    async with ehr_harness(tmp_path, database_url, cds) as harness:
        assert (await harness.add_service(approveAllPrefetch=True)).status_code == 201
        yield harness


async def _fire_order_sign(h: EhrHarness) -> tuple[str, dict[str, Any]]:
    patient = h.fhir.patient_of(0)
    draft = _draft(patient)
    context = {"draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}}
    response = await h.fire("order-sign", userId=h.fhir.practitioner(0), patientId=patient, context=context)
    assert response.status_code == 200, response.text
    assert response.json()["services"][0]["status"] == "ok", response.json()
    assert response.json()["services"][0]["cards"], response.json()
    return str(response.json()["hookInstance"]), draft


def _fhir_writes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every transaction Bundle the FHIR server receives from here on."""
    received: list[dict[str, Any]] = []
    forward = Router.handle_async_request

    async def spy(self: Router, request: httpx.Request) -> httpx.Response:
        if request.url.host == "fhir.test" and request.method != "GET":
            await request.aread()
            received.append({"method": request.method, "path": request.url.path, "body": json.loads(request.content)})
        return await forward(self, request)

    monkeypatch.setattr(Router, "handle_async_request", spy)
    return received


async def _decision(h: EhrHarness, hook_instance: str) -> CdsCardOutcomeRow:
    async with h.ehr_app.state.runtime.sessions() as session:
        query = select(CdsCardOutcomeRow).where(CdsCardOutcomeRow.hook_instance == hook_instance)
        row: CdsCardOutcomeRow = (await session.execute(query)).scalar_one()
        return row


async def test_accepting_the_removal_of_an_unsigned_draft_sends_no_delete_and_records_the_draft_discarded(
    orders: EhrHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = orders
    h.cds.answers["dup"] = _removing(None)
    hook_instance, draft = await _fire_order_sign(h)
    writes = _fhir_writes(monkeypatch)
    body = {"hookInstance": hook_instance, "serviceId": "dup", "cardUuid": "card-1", "suggestionUuid": "sugg-remove"}
    response = await h.ehr.post("/api/suggestions/accept", json=body, headers=h.admin)
    assert response.status_code == 200, response.text
    discarded = [{"resource": f"MedicationRequest/{draft['id']}", "outcome": "draft discarded"}]
    assert response.json()["transaction"] == [] and response.json()["drafts"] == discarded
    assert writes == []  # the FHIR server was sent nothing: no DELETE for what it never stored
    (feedback,) = h.cds.calls("/cds-services/dup/feedback")
    (entry,) = feedback.body["feedback"]
    assert (entry["outcome"], entry["acceptedSuggestions"]) == ("accepted", [{"id": "sugg-remove"}])
    decision = await _decision(h, hook_instance)
    assert (decision.outcome, decision.suggestion_uuid, decision.feedback_status) == ("accepted", "sugg-remove", 200)
    assert json.loads(decision.detail) == {"transaction": [], "drafts": discarded}


async def test_a_delete_of_a_stored_resource_beside_the_draft_still_goes_through_as_the_user(
    orders: EhrHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = orders
    patient = h.fhir.patient_of(0)
    token = await h.fhir.token("system/*.cruds")
    created = await h.fhir.client.post(
        "/fhir/Observation", json=_observation(patient, "stale"), headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201, created.text
    stored = f"Observation/{created.json()['id']}"
    h.cds.answers["dup"] = _removing(stored)
    hook_instance, draft = await _fire_order_sign(h)
    writes = _fhir_writes(monkeypatch)
    body = {"hookInstance": hook_instance, "serviceId": "dup", "cardUuid": "card-1", "suggestionUuid": "sugg-remove"}
    response = await h.ehr.post("/api/suggestions/accept", json=body, headers=h.admin)
    assert response.status_code == 200, response.text
    (transaction,) = [w for w in writes if w["path"] == "/fhir"]
    assert [e["request"] for e in transaction["body"]["entry"]] == [{"method": "DELETE", "url": stored}]
    assert [e["status"][:3] for e in response.json()["transaction"]] in (["200"], ["204"])
    assert response.json()["drafts"] == [{"resource": f"MedicationRequest/{draft['id']}", "outcome": "draft discarded"}]
    assert await _observations(h, patient, "stale") == []
    assert len(h.cds.calls("/cds-services/dup/feedback")) == 1
