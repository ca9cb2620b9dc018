"""The example service's CDS Hooks routes (CDS Hooks 2.0): discovery, a service call, feedback.

Every route authenticates the CDS Client's JWT first (auth.py, as a dependency, so before any
body is read), so an unauthenticated caller learns nothing — not even whether a service id
exists or a body is valid: a bare 401.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from common.bodies import parse_json
from examples.cds_service.auth import Verified, authenticate
from examples.cds_service.cards import CallEnv
from examples.cds_service.errors import BadRequest
from examples.cds_service.feedback import inconsistency
from examples.cds_service.fhir_data import DataSource
from examples.cds_service.schemas import FHIR_ID, CdsResponse, FeedbackBody, HookRequest
from examples.cds_service.services import SERVICES, Service
from examples.cds_service.state import CdsState, cds_state

log = logging.getLogger(__name__)


def get_state(request: Request) -> CdsState:
    return cds_state(request.app)


StateDep = Annotated[CdsState, Depends(get_state)]


async def authenticated(request: Request, state: StateDep) -> Verified:
    connections = state.connected()
    return await authenticate(request, state.settings, connections.trusted, connections.replay, state.clock)


CallerDep = Annotated[Verified, Depends(authenticated)]


# --- reading a request ---------------------------------------------------------------------------


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "body"
    return f"{where}: {error['msg']}"


async def _json_body(request: Request, max_depth: int) -> Any:
    # At most max_body_bytes: BodyLimitMiddleware has counted it before authentication.
    try:
        return parse_json(await request.body(), max_depth=max_depth)
    except ValueError:
        raise BadRequest("body is not JSON") from None


def _check_patient(hook_request: HookRequest) -> str:
    patient_id = hook_request.context.get("patientId")
    if not isinstance(patient_id, str) or not re.fullmatch(FHIR_ID, patient_id):
        raise BadRequest("context.patientId must be a FHIR id")
    auth = hook_request.fhirAuthorization
    if auth is not None and auth.patient is not None and auth.patient != patient_id:
        # A token for another patient must not be used for this one (§fhirAuthorization `patient`).
        raise BadRequest("fhirAuthorization.patient is not context.patientId")
    return patient_id


def _not_found() -> JSONResponse:
    return JSONResponse({"error": "not_found", "message": "no such service"}, status_code=404)


# --- answering -----------------------------------------------------------------------------------


async def answer(state: CdsState, service: Service, body: Any) -> dict[str, Any]:
    """The service's cards for one hook call (CDS Hooks 2.0 §HTTP Response), remembered for feedback."""
    try:
        hook_request = HookRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_first_error(exc)) from None
    if hook_request.hook != service.hook:
        raise BadRequest(f"this service answers the {service.hook} hook only")
    patient_id = _check_patient(hook_request)
    user = hook_request.context.get("userId")
    env = CallEnv(
        today=dt.datetime.fromtimestamp(state.clock(), dt.UTC).date(),
        patient_id=patient_id,
        user_ref=user if isinstance(user, str) and user.startswith("Practitioner/") else None,
        smart_launch_url=state.settings.smart_launch_url,
    )
    data = DataSource(hook_request, state.connected().http, state.settings)
    # DataUnavailable → 412 (CDS Hooks 2.0 §HTTP Response), bad context → 400 (errors.py).
    cards = await service.logic(data, env, hook_request)
    await state.issued.remember(service.id, cards)
    return CdsResponse(cards=cards).wire()


async def take_feedback(state: CdsState, service_id: str, body: Any) -> None:
    """CDS Hooks 2.0 §Feedback: all items consistent with the cards issued, or none recorded."""
    try:
        feedback = FeedbackBody.model_validate(body)
    except ValidationError as exc:
        raise BadRequest(_first_error(exc)) from None
    issued = [(item, await state.issued.get(item.card)) for item in feedback.feedback]
    for item, card in issued:
        problem = inconsistency(service_id, item, card)
        if problem is not None:
            raise BadRequest(problem)
    for item, card in issued:
        state.feedback.record(service_id, item, matched=card is not None)
        log.info("feedback %s: card %s %s", service_id, item.card, item.outcome)


# --- the routes ----------------------------------------------------------------------------------

router = APIRouter()


@router.get("/cds-services")
async def discovery(_caller: CallerDep) -> JSONResponse:
    return JSONResponse({"services": [s.definition.wire() for s in SERVICES.values()]})


@router.post("/cds-services/{service_id}")
async def call(service_id: str, request: Request, state: StateDep, _caller: CallerDep) -> Response:
    service = SERVICES.get(service_id)
    if service is None:
        return _not_found()
    return JSONResponse(await answer(state, service, await _json_body(request, state.settings.max_json_depth)))


@router.post("/cds-services/{service_id}/feedback")
async def feedback(service_id: str, request: Request, state: StateDep, _caller: CallerDep) -> Response:
    if service_id not in SERVICES:
        return _not_found()
    await take_feedback(state, service_id, await _json_body(request, state.settings.max_json_depth))
    return Response(status_code=200)
