"""Every legal card can be acted on (issue 13 §3): `uuid` is optional on cards and suggestions
(CDS Hooks 2.0 §Card, §Suggestion). One without is named by its position in the recorded
response, the exchange says so, and a card without uuid gets no feedback (the spec keys feedback
by card uuid). What the EHR ignores in a response is noted in the exchange log."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.responses import JSONResponse, Response

from tests.integration.ehrharness import CdsDouble, EhrHarness, card, greeting_service

FEEDBACK = "/cds-services/greeting/feedback"
BY_POSITION = {"index": 1, "identifiedBy": "suggestion identified by position; no uuid"}
NO_FEEDBACK = "no feedback could be sent: the card has no uuid (CDS Hooks 2.0 §Feedback names a card by it)"


def _observation(patient: str, text: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _uuidless(body: dict[str, Any]) -> Response:
    """Like the CDS Hooks sandbox's pama-imaging: a card with uuid whose suggestions have none, a
    card without uuid at all, and systemActions where the 2019 PAMA convention put them."""
    patient = body["context"]["patientId"]

    def create(text: str) -> list[dict[str, Any]]:
        return [{"type": "create", "description": text, "resource": _observation(patient, text)}]

    suggestions = [{"label": "First", "actions": create("first")}, {"label": "Second", "actions": create("second")}]
    bare = {k: v for k, v in card().items() if k != "uuid"}
    return JSONResponse(
        {
            "cards": [
                card("card-1", selectionBehavior="at-most-one", suggestions=suggestions),
                {**bare, "selectionBehavior": "any", "suggestions": [{"label": "Third", "actions": create("third")}]},
            ],
            "extension": {"systemActions": create("pama system action")},
            "pamaRating": "appropriate",
        }
    )


@pytest.fixture
def cds() -> CdsDouble:
    return CdsDouble(services=[greeting_service()], answers={"greeting": _uuidless})


@pytest.fixture
async def h(h: EhrHarness) -> EhrHarness:
    """The shared harness with the service added."""
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    return h


async def _fire(h: EhrHarness) -> str:
    response = await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0))
    assert response.status_code == 200, response.text
    assert response.json()["services"][0]["status"] == "ok", response.json()
    return str(response.json()["hookInstance"])


async def _observations(h: EhrHarness, text: str) -> list[dict[str, Any]]:
    bundle = (await h.fhir_read("Observation", subject=f"Patient/{h.fhir.patient_of(0)}", _count=200)).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"].get("code", {}).get("text") == text]


async def _accept(h: EhrHarness, hook_instance: str, **naming: Any) -> Any:
    body = {"hookInstance": hook_instance, "serviceId": "greeting", **naming}
    return await h.ehr.post("/api/suggestions/accept", json=body, headers=h.admin)


async def _exchange(h: EhrHarness, hook_instance: str) -> dict[str, Any]:
    response = await h.ehr.get(f"/api/exchanges/{hook_instance}", headers=h.admin)
    assert response.status_code == 200, response.text
    (service,) = response.json()["services"]
    return dict(service)


async def test_a_suggestion_without_uuid_is_accepted_by_its_position_and_the_exchange_says_so(h: EhrHarness) -> None:
    hook_instance = await _fire(h)
    response = await _accept(h, hook_instance, cardUuid="card-1", suggestionIndex=1)
    assert response.status_code == 200, response.text
    assert response.json()["suggestion"] == BY_POSITION
    # The FHIR write happened as the user, for the suggestion at that position and no other.
    (written,) = await _observations(h, "second")
    assert written["subject"] == {"reference": f"Patient/{h.fhir.patient_of(0)}"}
    assert await _observations(h, "first") == []
    # The card has a uuid: feedback goes, naming no suggestion (it has no uuid to name it by).
    (feedback,) = h.cds.calls(FEEDBACK)
    (entry,) = feedback.body["feedback"]
    assert (entry["card"], entry["outcome"], entry["acceptedSuggestions"]) == ("card-1", "accepted", [])
    (decision,) = (await _exchange(h, hook_instance))["decisions"]
    assert (decision["card"], decision["outcome"], decision["suggestion"]) == ("card-1", "accepted", None)
    assert decision["detail"]["suggestion"] == BY_POSITION


async def test_a_card_without_uuid_is_accepted_by_position_and_no_feedback_post_is_sent(h: EhrHarness) -> None:
    hook_instance = await _fire(h)
    response = await _accept(h, hook_instance, cardIndex=1, suggestionIndex=0)
    assert response.status_code == 200, response.text
    assert response.json()["feedback"] == {"status": None, "error": NO_FEEDBACK, "delivered": False}
    assert len(await _observations(h, "third")) == 1
    assert h.cds.calls(FEEDBACK) == []
    (decision,) = (await _exchange(h, hook_instance))["decisions"]
    assert decision["detail"]["card"] == {"index": 1, "identifiedBy": "card identified by position; no uuid"}
    assert decision["feedback"] == {"status": None, "error": NO_FEEDBACK}
    # Decided once, like any card.
    again = await _accept(h, hook_instance, cardIndex=1, suggestionIndex=0)
    assert again.status_code == 409
    assert len(await _observations(h, "third")) == 1


async def test_a_card_without_uuid_is_dismissed_and_the_exchange_records_that_no_feedback_could_be_sent(
    h: EhrHarness,
) -> None:
    hook_instance = await _fire(h)
    body = {"hookInstance": hook_instance, "serviceId": "greeting", "cardIndex": 1, "outcome": "overridden"}
    response = await h.ehr.post("/api/feedback", json=body, headers=h.admin)
    assert response.status_code == 200, response.text
    assert response.json()["feedback"]["error"] == NO_FEEDBACK
    assert h.cds.calls(FEEDBACK) == []
    (decision,) = (await _exchange(h, hook_instance))["decisions"]
    assert (decision["outcome"], decision["feedback"]["error"]) == ("overridden", NO_FEEDBACK)
    # Dismissed means decided: its suggestion can no longer be applied.
    assert (await _accept(h, hook_instance, cardIndex=1, suggestionIndex=0)).status_code == 409
    assert await _observations(h, "third") == []


async def test_a_position_never_names_what_has_a_uuid_nor_what_is_not_there(h: EhrHarness) -> None:
    """The uniqueness protection stands: position names only a card or suggestion without uuid,
    so a click on one label never applies another suggestion's actions."""
    h.cds.answers["greeting"] = lambda body: JSONResponse(
        {
            "cards": [
                card(
                    "card-1",
                    selectionBehavior="at-most-one",
                    suggestions=[{"label": "Named", "uuid": "sugg-1", "actions": []}],
                )
            ]
        }
    )
    hook_instance = await _fire(h)
    cases: list[dict[str, Any]] = [
        {"cardIndex": 0, "suggestionUuid": "sugg-1"},  # the card has a uuid
        {"cardUuid": "card-1", "suggestionIndex": 0},  # the suggestion has a uuid
        {"cardUuid": "card-1", "suggestionIndex": 5},
        {"cardIndex": 7, "suggestionIndex": 0},
    ]
    for naming in cases:
        assert (await _accept(h, hook_instance, **naming)).status_code == 404, naming
    both = await _accept(h, hook_instance, cardUuid="card-1", cardIndex=0, suggestionUuid="sugg-1")
    assert both.status_code == 400 and "exactly one of cardUuid and cardIndex" in both.json()["message"]
    neither = await _accept(h, hook_instance, cardUuid="card-1")
    assert neither.status_code == 400 and "suggestionUuid and suggestionIndex" in neither.json()["message"]
    assert h.cds.calls(FEEDBACK) == []


async def test_extension_system_actions_and_unknown_top_level_members_are_noted_in_the_exchange(
    h: EhrHarness,
) -> None:
    hook_instance = await _fire(h)
    service = await _exchange(h, hook_instance)
    assert service["notes"] == [
        "extension.systemActions ignored: CDS Hooks 2.0 takes systemActions at the top level of the response "
        "(extension.systemActions is the 2019 PAMA convention)",
        "unknown top-level members of the response ignored: 'pamaRating'",
    ]
    assert service["systemActions"] == []
    assert await _observations(h, "pama system action") == []
