"""Signing an order: the draft the user reviewed with order-sign becomes an order in the FHIR
server, written as the user.

CDS Hooks 2.0 "order-sign" fires when the clinician is ready to sign; the cards it returns are
decided (a suggestion accepted, or the card overridden with a reason) before the order is
committed. Here:

1. The browser builds a draft (status `draft`, id `draft-<uuid>`, never stored) and fires
   order-sign with it through the EHR's API; the user decides on the cards through the API too.
2. `POST /ui/orders` confirms. The body names the order-sign call (`hookInstance`), the draft
   id and the item (kind and code). The EHR checks that call was this user's, for this patient,
   about this draft; that no accepted suggestion removed the draft (CDS Hooks §Action `delete`:
   for a draft that was never stored, deleting it means discarding it); and that every critical
   or warning card has a decision. With services enabled for order-sign, a signature without
   their call is refused.
3. The EHR builds the order itself from its own list of orderables (the browser never supplies
   the resource): status `active`, intent `order`, subject the patient, requester the signed-in
   user, the encounter only if it is this patient's. It POSTs it with the session's own access
   token, so the FHIR server's guard keeps the write inside the user's compartment; the draft's
   uuid becomes the order's identifier with `If-None-Exist`, so a repeated confirmation does not
   order twice.

Cancelling is the browser forgetting the draft: nothing was stored and nothing is written.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ehr.deps import RegistryDep
from ehr.exchange_log import exchange_rows
from ehr.models import CdsCardOutcomeRow, CdsExchangeRow
from ehr.registry import Registry
from ehr.ui.chart import FHIR_JSON, FhirReader, FhirUnauthorized, FhirUnavailable
from ehr.ui.orders import Orderable, orderable
from ehr.ui.session import Session
from ehr.ui.state import UiState, ui_state

log = logging.getLogger(__name__)
MAX_BODY = 8192
BLOCKING = frozenset({"critical", "warning"})
DRAFT_ID = r"^draft-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
LAB_CATEGORY = {
    "coding": [{"system": "http://snomed.info/sct", "code": "108252007", "display": "Laboratory procedure"}]
}
URI = "urn:ietf:rfc:3986"


class SignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    patientId: str = Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    encounterId: str | None = Field(default=None, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    hookInstance: str = Field(pattern=r"^[A-Za-z0-9\-._:]{1,128}$")
    draftId: str = Field(pattern=DRAFT_ID)
    kind: Literal["medication", "lab"]
    system: str = Field(max_length=256)
    code: str = Field(max_length=64)

    @property
    def resource_type(self) -> str:
        return "MedicationRequest" if self.kind == "medication" else "ServiceRequest"

    @property
    def draft_ref(self) -> str:
        return f"{self.resource_type}/{self.draftId}"


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "message": self.message}, self.status)


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _draft_ids(request: Any) -> set[str]:
    """The ids of the drafts an order-sign request (as the EHR logged it) was about."""
    context = request.get("context") if isinstance(request, dict) else None
    bundle = context.get("draftOrders") if isinstance(context, dict) else None
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    found = set()
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("id"), str):
            found.add(f"{resource.get('resourceType')}/{resource['id']}")
    return found


def _deletes(suggestion: Mapping[str, Any], reference: str) -> bool:
    for action in suggestion.get("actions") or []:
        if isinstance(action, dict) and action.get("type") == "delete":
            targets = action.get("resourceId")
            if reference in (targets if isinstance(targets, list) else [targets]):
                return True
    return False


Decisions = Mapping[tuple[str, str], tuple[str, str | None]]  # (service, card uuid) → (outcome, suggestion)


def review_problem(rows: Iterable[CdsExchangeRow], decisions: Decisions, draft_ref: str) -> str | None:
    """Why this draft may not be signed after this order-sign call, or None when it may."""
    for row in rows:
        if row.status != "ok":
            continue  # a service that failed returned no cards to decide
        if draft_ref not in _draft_ids(_json(row.request)):
            return "that order-sign call was not about this draft"
        for card in _json(row.cards) or []:
            if not isinstance(card, dict):
                continue
            decision = decisions.get((row.service_id, str(card.get("uuid"))))
            if decision is None:
                if card.get("indicator") in BLOCKING:
                    return "decide every critical and warning card first (accept a suggestion or dismiss it)"
                continue
            outcome, suggestion_uuid = decision
            if outcome != "accepted":
                continue
            accepted = [s for s in card.get("suggestions") or [] if isinstance(s, dict)]
            if any(s.get("uuid") == suggestion_uuid and _deletes(s, draft_ref) for s in accepted):
                return "an accepted suggestion removed this draft; nothing was ordered"
    return None


def order_resource(
    body: SignRequest, item: Orderable, user_ref: str, today: str, encounter_id: str | None
) -> dict[str, Any]:
    """The order as the EHR writes it: only what the EHR itself decides, never the browser."""
    concept = {"coding": [{"system": item.system, "code": item.code, "display": item.display}], "text": item.display}
    resource: dict[str, Any] = {
        "resourceType": body.resource_type,
        "identifier": [{"system": URI, "value": "urn:uuid:" + body.draftId.removeprefix("draft-")}],
        "status": "active",
        "intent": "order",
        "subject": {"reference": f"Patient/{body.patientId}"},
        "authoredOn": today,
        "requester": {"reference": user_ref},
    }
    if encounter_id is not None:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    if body.kind == "medication":
        resource["medicationCodeableConcept"] = concept
    else:
        resource["code"] = concept
        resource["category"] = [LAB_CATEGORY]
    return resource


async def _decisions(
    sessions: async_sessionmaker[AsyncSession], hook_instance: str
) -> dict[tuple[str, str], tuple[str, str | None]]:
    async with sessions() as session:
        query = select(CdsCardOutcomeRow).where(CdsCardOutcomeRow.hook_instance == hook_instance)
        rows = (await session.execute(query)).scalars()
        return {(r.service_id, r.card_uuid): (r.outcome, r.suggestion_uuid) for r in rows}


async def _check_review(ui: UiState, registry: Registry, body: SignRequest, user_ref: str) -> None:
    rows = await exchange_rows(ui.runtime.sessions, body.hookInstance)
    # Another user's call, or one for another patient, looks exactly like a missing one.
    if any(r.hook != "order-sign" or r.user_ref != user_ref or r.patient_id != body.patientId for r in rows):
        raise Refused(404, "not_found", "no such order-sign call")
    if not rows:
        if await registry.enabled_for("order-sign", None):
            raise Refused(409, "conflict", "sign through order-sign first (its cards are not reviewed)")
        return
    problem = review_problem(rows, await _decisions(ui.runtime.sessions, body.hookInstance), body.draft_ref)
    if problem is not None:
        raise Refused(409, "conflict", problem)


async def _create(http: httpx.AsyncClient, base: str, token: str, resource: dict[str, Any]) -> dict[str, Any]:
    identifier = resource["identifier"][0]
    try:
        response = await http.post(
            f"{base}/{resource['resourceType']}",
            json=resource,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
                "If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}",
            },
        )
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise Refused(503, "unavailable", f"the FHIR server could not be reached ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        # Sent, and the answer lost: it may be stored. Confirming again is safe, because the
        # draft's identifier with If-None-Exist never stores the same order twice.
        raise Refused(
            503, "unavailable", f"the FHIR server's answer was lost ({type(exc).__name__}); confirm again"
        ) from None
    if response.status_code == 401:
        raise FhirUnauthorized
    if response.status_code in (403, 404):
        raise Refused(403, "forbidden", "the FHIR server refused the order for this user")
    try:
        stored = response.json()
    except ValueError:
        stored = None
    if response.status_code not in (200, 201) or not isinstance(stored, dict) or not stored.get("id"):
        log.warning("order not written: the FHIR server answered %s", response.status_code)
        raise Refused(502, "upstream_error", f"the FHIR server did not store the order ({response.status_code})")
    return {
        "resourceType": stored.get("resourceType"),
        "id": stored["id"],
        "status": stored.get("status"),
        "created": response.status_code == 201,
    }


def _parse(raw: bytes) -> SignRequest | None:
    try:
        if len(raw) > MAX_BODY:
            raise ValueError("too large")
        return SignRequest.model_validate_json(raw)
    except (ValidationError, ValueError):
        return None


async def sign_order(
    ui: UiState, registry: Registry, session: Session, body: SignRequest, item: Orderable
) -> dict[str, Any]:
    """Write the reviewed order as the user (Refused: why not)."""
    reader = FhirReader(ui.runtime.http, ui.config.fhir_base_url, session.access_token)
    await _check_review(ui, registry, body, session.user_ref)
    if not await reader.chart_visible(body.patientId):
        raise Refused(404, "not_found", "no such patient")
    if body.encounterId is not None and not await reader.encounter_of(body.patientId, body.encounterId):
        raise Refused(400, "invalid_request", "that encounter is not this patient's")
    today = dt.datetime.fromtimestamp(ui.now(), dt.UTC).date().isoformat()
    resource = order_resource(body, item, session.user_ref, today, body.encounterId)
    return await _create(ui.runtime.http, ui.config.fhir_base_url, session.access_token, resource)


router = APIRouter()


@router.post("/ui/orders")
async def sign(request: Request, registry: RegistryDep) -> Response:
    ui = ui_state(request)
    session = await ui.posting_session(request)
    if isinstance(session, Response):
        return session
    body = _parse(await request.body())
    if body is None:
        return JSONResponse({"error": "invalid_request", "message": "not a valid order to sign"}, 400)
    item = orderable(body.kind, body.system, body.code)
    if item is None:
        return JSONResponse({"error": "invalid_request", "message": "not an item the order form offers"}, 400)
    try:
        written = await sign_order(ui, registry, session, body, item)
    except Refused as refused:
        return refused.response()
    except FhirUnavailable:
        return JSONResponse({"error": "unavailable", "message": "the FHIR server could not answer"}, 503)
    except FhirUnauthorized:
        return Response(status_code=401, headers={"WWW-Authenticate": "Session"})
    return JSONResponse(written, status_code=201 if written["created"] else 200)
