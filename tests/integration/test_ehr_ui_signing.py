"""Signing an order from the chart (POST /ui/orders), in-process: the EHR writes only the order it
builds itself, as the signed-in user, after the order-sign call's cards were decided; CSRF, another
user's call, another patient's encounter and a draft a suggestion removed are refused, and then
nothing reaches the FHIR server. The FHIR server is a recording double (httpx.MockTransport)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import FrozenClock
from common.runtime import Runtime
from ehr.app import create_app
from ehr.models import CdsCardOutcomeRow, CdsExchangeRow, CdsServiceRow
from ehr.settings import EhrSettings
from ehr.state import ehr_state
from ehr.ui.session import SESSION_COOKIE, CookieBox, Session
from ehr.ui.state import UiState, ui_state
from tests.integration.apps import serving

EHR = "https://ehr.test"
AUTH = "https://127.0.0.1:1"
FHIR = "https://fhir.test/fhir"
USER = "Practitioner/p-1"
OTHER = "Practitioner/p-2"
PATIENT = "pat-1"
CSRF = "csrf-secret-of-this-session"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass
class FakeFhir:
    """Patient pat-1 and its Encounter enc-1 are visible; Encounter enc-x is another patient's."""

    requests: list[httpx.Request] = field(default_factory=list)
    lose_next_write: bool = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST" and self.lose_next_write:
            self.lose_next_write = False
            raise httpx.ReadTimeout("the answer was lost", request=request)
        path = request.url.path.removeprefix("/fhir/")
        if request.method == "GET" and path == f"Patient/{PATIENT}":
            return httpx.Response(200, json={"resourceType": "Patient", "id": PATIENT})
        if request.method == "GET" and path == "Encounter/enc-1":
            return httpx.Response(
                200, json={"resourceType": "Encounter", "id": "enc-1", "subject": {"reference": "Patient/pat-1"}}
            )
        if request.method == "GET" and path == "Encounter/enc-x":
            return httpx.Response(
                200, json={"resourceType": "Encounter", "id": "enc-x", "subject": {"reference": "Patient/pat-9"}}
            )
        if request.method == "POST" and path in ("MedicationRequest", "ServiceRequest"):
            return httpx.Response(201, json={**json.loads(request.content), "id": "new-1"})
        return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})

    @property
    def writes(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]


@dataclass
class Ehr:
    client: httpx.AsyncClient
    runtime: Runtime
    fhir: FakeFhir

    async def store(self, *rows: CdsExchangeRow | CdsCardOutcomeRow | CdsServiceRow) -> None:
        async with self.runtime.sessions() as session, session.begin():
            session.add_all(rows)

    async def sign(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"X-CSRF-Token": CSRF, **(headers or {})}
        return await self.client.post("/ui/orders", json=body, headers=sent)


@pytest.fixture
async def ehr(tmp_path: Path, database_url: str) -> AsyncIterator[Ehr]:
    clock = FrozenClock(time.time())
    settings = EhrSettings(
        data_dir=tmp_path, database_url=database_url, public_url=EHR, authserver_url=AUTH, fhir_base_url=FHIR
    )
    app = create_app(settings, clock=clock)
    fhir = FakeFhir()
    async with serving(app, EHR) as client, httpx.AsyncClient(transport=httpx.MockTransport(fhir.handler)) as http:
        real = ui_state_of(app)
        ehr_state(app).ui = UiState(real.config, real.box, real.auth, replace(real.runtime, http=http))
        now = int(clock())
        session = Session(USER, "Dr. Test", "the-users-own-token", now + 280, None, CSRF, now, now, sid="sid-1")
        client.cookies.set(SESSION_COOKIE, CookieBox(settings.kek()).seal(SESSION_COOKIE, asdict(session)))
        yield Ehr(client, app.state.runtime, fhir)


def ui_state_of(app: Any) -> UiState:
    class _Request:  # ui_state reads only request.app
        def __init__(self) -> None:
            self.app = app

    return ui_state(_Request())  # type: ignore[arg-type]


def draft_id() -> str:
    return f"draft-{uuid.uuid4()}"


def body(draft: str, hook_instance: str, **changes: Any) -> dict[str, Any]:
    return {
        "patientId": PATIENT,
        "hookInstance": hook_instance,
        "draftId": draft,
        "kind": "medication",
        "system": RXNORM,
        "code": "860975",
        **changes,
    }


def exchange(hook_instance: str, draft: str, cards: list[dict[str, Any]], **changes: Any) -> CdsExchangeRow:
    request = {
        "hook": "order-sign",
        "context": {
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [{"resource": {"resourceType": "MedicationRequest", "id": draft, "status": "draft"}}],
            }
        },
    }
    values: dict[str, Any] = {
        "hook_instance": hook_instance,
        "hook": "order-sign",
        "service_id": "medication-safety",
        "user_ref": USER,
        "patient_id": PATIENT,
        "status": "ok",
        "request": json.dumps(request),
        "cards": json.dumps(cards),
        "created_at": int(time.time()),
        **changes,
    }
    return CdsExchangeRow(**values)


def duplicate_card(draft: str) -> dict[str, Any]:
    return {
        "uuid": "card-1",
        "summary": "Duplicate therapy",
        "indicator": "warning",
        "suggestions": [
            {
                "uuid": "sug-1",
                "label": "Remove the draft",
                "actions": [{"type": "delete", "resourceId": f"MedicationRequest/{draft}"}],
            }
        ],
    }


def decision(hook_instance: str, outcome: str, suggestion: str | None) -> CdsCardOutcomeRow:
    return CdsCardOutcomeRow(
        hook_instance=hook_instance,
        service_id="medication-safety",
        card_uuid="card-1",
        outcome=outcome,
        suggestion_uuid=suggestion,
        user_ref=USER,
        detail="{}",
        created_at=int(time.time()),
    )


async def test_a_reviewed_order_is_written_as_the_user_with_the_ehrs_own_fields(ehr: Ehr) -> None:
    draft, hook_instance = draft_id(), str(uuid.uuid4())
    await ehr.store(
        exchange(hook_instance, draft, [duplicate_card(draft)]), decision(hook_instance, "overridden", None)
    )
    answer = await ehr.sign(body(draft, hook_instance, encounterId="enc-1"))
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"resourceType": "MedicationRequest", "id": "new-1", "status": "active", "created": True}
    post = next(r for r in ehr.fhir.requests if r.method == "POST")
    assert post.url == f"{FHIR}/MedicationRequest"
    assert post.headers["authorization"] == "Bearer the-users-own-token"  # the session's token, not the EHR's
    assert post.headers["if-none-exist"] == f"identifier=urn:ietf:rfc:3986|urn:uuid:{draft.removeprefix('draft-')}"
    [written] = ehr.fhir.writes
    assert written["status"] == "active" and written["intent"] == "order"
    assert written["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert written["requester"] == {"reference": USER}
    assert written["encounter"] == {"reference": "Encounter/enc-1"}
    assert written["medicationCodeableConcept"]["coding"][0]["code"] == "860975"
    assert "id" not in written


async def test_a_draft_whose_remove_suggestion_was_accepted_is_never_written(ehr: Ehr) -> None:
    draft, hook_instance = draft_id(), str(uuid.uuid4())
    await ehr.store(
        exchange(hook_instance, draft, [duplicate_card(draft)]), decision(hook_instance, "accepted", "sug-1")
    )
    answer = await ehr.sign(body(draft, hook_instance))
    assert answer.status_code == 409 and "removed this draft" in answer.json()["message"]
    assert ehr.fhir.requests == []


async def test_an_undecided_warning_card_blocks_the_signature(ehr: Ehr) -> None:
    draft, hook_instance = draft_id(), str(uuid.uuid4())
    info = {"uuid": "card-2", "summary": "fyi", "indicator": "info"}
    await ehr.store(exchange(hook_instance, draft, [duplicate_card(draft), info]))
    answer = await ehr.sign(body(draft, hook_instance))
    assert answer.status_code == 409 and "decide every critical and warning card" in answer.json()["message"]
    assert ehr.fhir.requests == []
    # The info card alone does not block: once the warning is overridden, it is signed.
    await ehr.store(decision(hook_instance, "overridden", None))
    assert (await ehr.sign(body(draft, hook_instance))).status_code == 201


async def test_another_users_or_another_patients_order_sign_call_looks_missing(ehr: Ehr) -> None:
    draft = draft_id()
    theirs, other_patient, other_hook = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await ehr.store(
        exchange(theirs, draft, [], user_ref=OTHER),
        exchange(other_patient, draft, [], patient_id="pat-9"),
        exchange(other_hook, draft, [], hook="order-select"),
    )
    for hook_instance in (theirs, other_patient, other_hook):
        answer = await ehr.sign(body(draft, hook_instance))
        assert answer.status_code == 404 and answer.json()["error"] == "not_found", hook_instance
    assert ehr.fhir.requests == []


async def test_a_call_about_another_draft_does_not_cover_this_one(ehr: Ehr) -> None:
    hook_instance = str(uuid.uuid4())
    await ehr.store(exchange(hook_instance, draft_id(), []))
    answer = await ehr.sign(body(draft_id(), hook_instance))
    assert answer.status_code == 409 and "not about this draft" in answer.json()["message"]
    assert ehr.fhir.requests == []


async def test_another_patients_encounter_is_refused(ehr: Ehr) -> None:
    draft, hook_instance = draft_id(), str(uuid.uuid4())
    await ehr.store(exchange(hook_instance, draft, []))
    answer = await ehr.sign(body(draft, hook_instance, encounterId="enc-x"))
    assert answer.status_code == 400 and ehr.fhir.writes == []


async def test_only_items_of_the_order_form_and_well_formed_drafts_are_signed(ehr: Ehr) -> None:
    draft, hook_instance = draft_id(), str(uuid.uuid4())
    for changes in (
        {"code": "999999"},  # not offered
        {"kind": "lab"},  # a medication code as a lab test
        {"draftId": "MedicationRequest/123"},
        {"status": "draft"},  # no extra fields: the browser never shapes the resource
        {"patientId": "../Patient/x"},
    ):
        answer = await ehr.sign(body(draft, hook_instance, **changes))
        assert answer.status_code == 400, changes
    assert ehr.fhir.requests == []


async def test_signing_needs_the_session_the_csrf_header_and_the_ehrs_origin(ehr: Ehr) -> None:
    draft, hook_instance = draft_id(), str(uuid.uuid4())
    await ehr.store(exchange(hook_instance, draft, []))
    assert (await ehr.client.post("/ui/orders", json=body(draft, hook_instance))).status_code == 403
    assert (await ehr.sign(body(draft, hook_instance), {"X-CSRF-Token": "wrong"})).status_code == 403
    cross = await ehr.sign(body(draft, hook_instance), {"Origin": "https://localhost:9004"})
    assert cross.status_code == 403
    ehr.client.cookies.clear()
    assert (await ehr.sign(body(draft, hook_instance))).status_code == 401
    assert ehr.fhir.requests == []


async def test_with_services_enabled_for_order_sign_a_signature_without_their_call_is_refused(ehr: Ehr) -> None:
    now = int(time.time())
    service = CdsServiceRow(
        id="medication-safety",
        discovery_url="https://cds.test/cds-services",
        cds_id="medication-safety",
        hook="order-sign",
        url="https://cds.test/cds-services/medication-safety",
        client_id="cds-example",
        created_at=now,
        updated_at=now,
    )
    await ehr.store(service)
    answer = await ehr.sign(body(draft_id(), str(uuid.uuid4())))
    assert answer.status_code == 409 and "sign through order-sign first" in answer.json()["message"]
    assert ehr.fhir.requests == []


async def test_a_patient_outside_the_users_list_gets_no_order(ehr: Ehr) -> None:
    answer = await ehr.sign(body(draft_id(), str(uuid.uuid4()), patientId="pat-9"))
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
    assert ehr.fhir.writes == []


async def test_a_lost_answer_asks_to_confirm_again_and_the_retry_names_the_same_order(ehr: Ehr) -> None:
    draft, hook_instance = draft_id(), str(uuid.uuid4())
    await ehr.store(exchange(hook_instance, draft, []))
    ehr.fhir.lose_next_write = True
    lost = await ehr.sign(body(draft, hook_instance))
    assert lost.status_code == 503 and "confirm again" in lost.json()["message"]
    assert (await ehr.sign(body(draft, hook_instance))).status_code == 201
    posts = [r for r in ehr.fhir.requests if r.method == "POST"]
    # If-None-Exist on the draft's identifier: the FHIR server stores the order at most once.
    assert len(posts) == 2 and posts[0].headers["if-none-exist"] == posts[1].headers["if-none-exist"]
    assert json.loads(posts[0].content) == json.loads(posts[1].content)
