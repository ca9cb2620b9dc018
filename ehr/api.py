"""The EHR's JSON API (`/api/...`): fire hooks, act on cards, read the exchange log, and (admin)
manage the CDS Service registry. The UI's JavaScript, `mockehr hook` and `mockehr services` call it.

Authentication comes first, before any body is read: the admin token or a UI session
(ehr/principal.py), else a bare 401. Bodies are then parsed and validated (ehr/api_bodies.py);
every error is JSON `{"error": code, "message": ...}` with a clear message, never a trace.
One router per concern: the hook, the cards, the exchange log, the registry.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from common.runtime import Runtime
from ehr import exchange_log
from ehr.api_bodies import (
    HOOK_NAME,
    MAX_ROW_ID,
    PATIENT_ID,
    SERVICE_ID,
    UUIDISH,
    AcceptRequest,
    FeedbackRequest,
    HookRequest,
    ServiceAdd,
    ServicePatch,
    parse_body,
    service_id_or_404,
)
from ehr.deps import AdminDep, CardActionsDep, PartsDep, PrincipalDep, RegistryDep, RuntimeDep
from ehr.errors import Forbidden, InvalidRequest, NotFound
from ehr.exchange import HookCall, ServiceConfig, ServiceResult
from ehr.hooks import HOOKS, HookContextError, hook_has_user, validate_context
from ehr.principal import Principal
from ehr.state import CdsParts
from ehr.suggestions import CardActions, CardRef, SuggestionRef

hooks_router = APIRouter(prefix="/api")
cards_router = APIRouter(prefix="/api")
exchanges_router = APIRouter(prefix="/api")
services_router = APIRouter(prefix="/api")


def _acting_user(principal: Principal, user_id: str | None) -> str:
    if principal.is_admin:
        if user_id is None:
            raise InvalidRequest("userId is required with the admin token (the user the hook fires for)")
        return user_id
    if principal.user_ref is None:
        raise Forbidden("this session names no user")
    if user_id is not None and user_id != principal.user_ref:
        raise Forbidden("a signed-in user fires hooks only as themselves")
    return principal.user_ref


def hook_context(hook: str, user_ref: str, body: HookRequest) -> dict[str, Any]:
    reserved = {"userId", "patientId", "encounterId"} & set(body.context)
    if reserved:
        raise InvalidRequest(f"context.{sorted(reserved)[0]} is set by the top-level field, not in context")
    context: dict[str, Any] = dict(body.context)
    if hook_has_user(hook):
        context["userId"] = user_ref
    context["patientId"] = body.patientId
    if body.encounterId is not None:
        context["encounterId"] = body.encounterId
    try:
        return validate_context(hook, context)
    except HookContextError as exc:
        raise InvalidRequest(exc.reason) from None


def result_json(result: ServiceResult, applied: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"serviceId": result.service_id, "status": result.status, "cards": result.cards}
    if result.reason:
        body["reason"] = result.reason
    if result.system_actions:
        body["systemActions"] = result.system_actions
    if applied is not None:
        body["systemActionsResult"] = applied
    if result.dropped:
        body["dropped"] = [{"index": d.index, "reason": d.reason} for d in result.dropped]
    if result.notes:
        body["notes"] = result.notes
    return body


async def apply_system_actions(
    actions: CardActions, config: ServiceConfig, call: HookCall, result: ServiceResult, session_token: str | None
) -> dict[str, Any] | None:
    """CDS Hooks 2.0 §systemActions: applied only for a service allowed to, as the user, in the
    patient's compartment (one transaction); otherwise recorded as not applied."""
    if result.status != "ok":
        return None
    if result.system_actions_result is not None or not result.system_actions:
        return result.system_actions_result  # refused by the engine (not allowed), or none sent
    if not config.allow_system_actions:
        return {"applied": False, "reason": "systemActions are not allowed for this service"}
    if call.user_ref is None:
        return {"applied": False, "reason": "no user to act as"}
    try:
        summary = await actions.apply(call.user_ref, call.patient_id, session_token, result.system_actions)
    except (InvalidRequest, Forbidden, NotFound) as exc:
        return {"applied": False, "reason": exc.message}
    except Exception as exc:  # noqa: BLE001 - any failure is reported, the cards still shown
        message = getattr(exc, "message", type(exc).__name__)
        return {"applied": False, "reason": str(message)}
    return {"applied": True, "transaction": summary}


async def fire(parts: CdsParts, runtime: Runtime, principal: Principal, hook: str, body: HookRequest) -> dict[str, Any]:
    """Call the hook's enabled services, record the exchange, apply allowed systemActions."""
    user_ref = _acting_user(principal, body.userId)
    context = hook_context(hook, user_ref, body)
    services = await parts.registry.enabled_for(hook, body.services)
    call = HookCall(hook, str(uuid.uuid4()), user_ref, body.patientId, context)
    # The session's own token stands for the user only when the hook fires for that user (an
    # admin session naming someone else gets a user assertion for them instead).
    user_token = principal.session_token if user_ref == principal.user_ref else None
    results: list[dict[str, Any]] = []
    if services:
        outcome = await parts.engine.run_hook(call, services, user_token=user_token)
        await exchange_log.record(runtime.sessions, outcome, int(runtime.clock()))
        by_id = {s.service_id: s for s in services}
        for result in outcome.results:
            applied = None
            if result.service_id in by_id:
                config = by_id[result.service_id]
                applied = await apply_system_actions(parts.card_actions, config, call, result, user_token)
            if applied is not None and result.system_actions_result is None:
                # What was written (or why not) joins the exchange's record.
                await exchange_log.record_system_actions(
                    runtime.sessions, call.hook_instance, result.service_id, applied
                )
            results.append(result_json(result, applied))
    return {"hookInstance": call.hook_instance, "hook": hook, "services": results}


# --- the hook ------------------------------------------------------------------------------------


@hooks_router.post("/hooks/{hook}")
async def fire_hook(
    hook: str, request: Request, principal: PrincipalDep, runtime: RuntimeDep, parts: PartsDep
) -> JSONResponse:
    if hook not in HOOKS:
        raise NotFound(f"hook {hook!r} is not one this EHR fires")
    body = await parse_body(request, HookRequest)
    return JSONResponse(await fire(parts, runtime, principal, hook, body))


# --- cards ---------------------------------------------------------------------------------------


@cards_router.post("/suggestions/accept")
async def accept(request: Request, principal: PrincipalDep, actions: CardActionsDep) -> JSONResponse:
    body = await parse_body(request, AcceptRequest)
    ref = CardRef(body.hookInstance, body.serviceId, body.cardUuid, body.cardIndex)
    which = SuggestionRef(body.suggestionUuid, body.suggestionIndex)
    return JSONResponse(await actions.accept(principal, ref, which, body.userId))


@cards_router.post("/feedback")
async def feedback(request: Request, principal: PrincipalDep, actions: CardActionsDep) -> JSONResponse:
    body = await parse_body(request, FeedbackRequest)
    ref = CardRef(body.hookInstance, body.serviceId, body.cardUuid, body.cardIndex)
    reason = body.overrideReason.model_dump(exclude_none=True) if body.overrideReason else None
    return JSONResponse(await actions.override(principal, ref, reason, body.userComment, body.userId))


# --- the exchange log ----------------------------------------------------------------------------


@exchanges_router.get("/exchanges")
async def exchanges(
    principal: PrincipalDep,
    runtime: RuntimeDep,
    patientId: str | None = Query(default=None, pattern=PATIENT_ID),
    serviceId: str | None = Query(default=None, pattern=SERVICE_ID),
    hook: str | None = Query(default=None, pattern=HOOK_NAME),
    before: int | None = Query(default=None, ge=1, le=MAX_ROW_ID),
    limit: int = Query(default=50, ge=1, le=500),
) -> JSONResponse:
    user = None if principal.is_admin else (principal.user_ref or "")
    items = await exchange_log.list_exchanges(
        runtime.sessions,
        user_ref=user,
        patient_id=patientId,
        service_id=serviceId,
        hook=hook,
        before=before,
        limit=limit,
    )
    return JSONResponse({"exchanges": items})


@exchanges_router.get("/exchanges/{hook_instance}")
async def exchange(hook_instance: str, principal: PrincipalDep, runtime: RuntimeDep) -> JSONResponse:
    if not re.fullmatch(UUIDISH, hook_instance):
        raise NotFound("no such exchange")
    rows = await exchange_log.exchange_rows(runtime.sessions, hook_instance)
    if not principal.is_admin:
        rows = [r for r in rows if r.user_ref is not None and r.user_ref == principal.user_ref]
    if not rows:
        raise NotFound("no such exchange")
    decisions = await exchange_log.card_decisions(runtime.sessions, hook_instance)
    return JSONResponse(exchange_log.exchange_json(rows, decisions))


# --- the registry (admin) ------------------------------------------------------------------------


@services_router.get("/services")
async def list_services(_admin: AdminDep, registry: RegistryDep) -> JSONResponse:
    return JSONResponse({"services": await registry.list_all()})


@services_router.post("/services")
async def add_service(request: Request, _admin: AdminDep, registry: RegistryDep) -> JSONResponse:
    body = await parse_body(request, ServiceAdd)
    registration = await registry.add(body.discoveryUrl, body.approval())
    return JSONResponse(registration.as_json(), status_code=201)


@services_router.patch("/services/{service_id}")
async def patch_service(service_id: str, request: Request, _admin: AdminDep, parts: PartsDep) -> JSONResponse:
    service_id = service_id_or_404(service_id)
    body = await parse_body(request, ServicePatch)
    updated = await parts.registry.update(service_id, body.model_dump(exclude_unset=True))
    await parts.engine.forget_service(service_id)  # a client kept for its old certificate is closed
    return JSONResponse(updated)


@services_router.post("/services/{service_id}/disable")
async def disable_service(service_id: str, _admin: AdminDep, parts: PartsDep) -> JSONResponse:
    service_id = service_id_or_404(service_id)
    disabled = await parts.registry.disable(service_id)
    await parts.engine.forget_service(service_id)
    return JSONResponse(disabled)


@services_router.delete("/services/{service_id}")
async def remove_service(service_id: str, _admin: AdminDep, parts: PartsDep) -> JSONResponse:
    service_id = service_id_or_404(service_id)
    removed = await parts.registry.remove(service_id)
    await parts.engine.forget_service(service_id)
    return JSONResponse(removed)


ROUTERS = (hooks_router, cards_router, exchanges_router, services_router)
