"""The EHR's JSON API (`/api/...`): fire hooks, act on cards, read the exchange log, and (admin)
manage the CDS Service registry. The UI's JavaScript, `mockehr hook` and `mockehr services` call it.

Authentication comes first, before any body is read: the admin token or a UI session
(ehr/principal.py), else a bare 401. Bodies are then parsed and validated; every error is JSON
`{"error": code, "message": ...}` with a clear message, never a trace.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ehr import exchange_log
from ehr.deps import AdminDep, PrincipalDep, RuntimeDep
from ehr.errors import Forbidden, InvalidRequest, NotFound, validation_message
from ehr.exchange import HookCall, HookOutcome, ServiceConfig, ServiceResult
from ehr.hooks import HOOKS, HookContextError, hook_has_user, validate_context
from ehr.principal import Principal
from ehr.registry import Approval, Registry
from ehr.suggestions import CardActions, CardRef, SuggestionRef

USER_REF = r"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$"
UUIDISH = r"^[A-Za-z0-9\-._:]{1,128}$"
# A registry key: a discovery id (ehr/discovery.py SERVICE_ID_PATTERN), maybe with ".hook-N".
SERVICE_ID = r"^[A-Za-z0-9][A-Za-z0-9._~:-]{0,127}$"
# A card's or suggestion's uuid as the service chose it: printable, no control characters (a NUL
# would otherwise reach the database, where PostgreSQL refuses it).
CARD_ID = r"^[^\x00-\x1f\x7f]{1,128}$"
PATIENT_ID = r"^[A-Za-z0-9\-.]{1,64}$"
HOOK_NAME = r"^[a-z][a-z0-9-]{0,63}$"
# Exchange row ids (the `before` cursor) are 32-bit integers in the database.
MAX_ROW_ID = 2**31 - 1
# A card's or suggestion's position in a recorded response (far above what ehr/cards.py keeps).
MAX_POSITION = 1000


M = TypeVar("M", bound=BaseModel)


class HookEngine(Protocol):
    async def run_hook(
        self, call: HookCall, services: list[ServiceConfig], *, user_token: str | None
    ) -> HookOutcome: ...

    async def forget_service(self, service_id: str) -> None: ...


# --- request bodies ------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HookRequest(_Body):
    userId: str | None = Field(default=None, pattern=USER_REF)
    patientId: str = Field(pattern=PATIENT_ID)
    encounterId: str | None = Field(default=None, pattern=PATIENT_ID)
    context: dict[str, Any] = Field(default_factory=dict)
    services: list[Annotated[str, Field(pattern=SERVICE_ID)]] | None = Field(default=None, min_length=1, max_length=50)


def _one_of(body: BaseModel, by_uuid: str, by_index: str) -> None:
    # CDS Hooks 2.0: `uuid` is optional on cards and suggestions; one without is named by its
    # position in the recorded response instead (ehr/suggestions.py). Exactly one way, never both.
    if (getattr(body, by_uuid) is None) == (getattr(body, by_index) is None):
        raise ValueError(f"give exactly one of {by_uuid} and {by_index}")


class AcceptRequest(_Body):
    hookInstance: str = Field(pattern=UUIDISH)
    serviceId: str = Field(pattern=SERVICE_ID)
    cardUuid: str | None = Field(default=None, pattern=CARD_ID)
    cardIndex: int | None = Field(default=None, ge=0, le=MAX_POSITION)
    suggestionUuid: str | None = Field(default=None, pattern=CARD_ID)
    suggestionIndex: int | None = Field(default=None, ge=0, le=MAX_POSITION)
    userId: str | None = Field(default=None, pattern=USER_REF)

    @model_validator(mode="after")
    def _named_once(self) -> AcceptRequest:
        _one_of(self, "cardUuid", "cardIndex")
        _one_of(self, "suggestionUuid", "suggestionIndex")
        return self


class Coding(BaseModel):
    model_config = ConfigDict(extra="allow")

    system: str | None = Field(default=None, max_length=512)
    code: str = Field(min_length=1, max_length=256)
    display: str | None = Field(default=None, max_length=512)


class FeedbackRequest(_Body):
    hookInstance: str = Field(pattern=UUIDISH)
    serviceId: str = Field(pattern=SERVICE_ID)
    cardUuid: str | None = Field(default=None, pattern=CARD_ID)
    cardIndex: int | None = Field(default=None, ge=0, le=MAX_POSITION)
    outcome: str = Field(pattern=r"^overridden$")
    overrideReason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=2000)
    userId: str | None = Field(default=None, pattern=USER_REF)

    @model_validator(mode="after")
    def _named_once(self) -> FeedbackRequest:
        _one_of(self, "cardUuid", "cardIndex")
        return self


class ServiceAdd(_Body):
    discoveryUrl: str = Field(min_length=8, max_length=512)
    hooks: list[str] = Field(default_factory=list)
    prefetch: list[str] = Field(default_factory=list)
    approveAllPrefetch: bool = False
    scope: list[str] = Field(default_factory=list)
    # By announced service id: scopes approved for that service alone (least privilege).
    serviceScopes: dict[str, list[str]] = Field(default_factory=dict, max_length=256)
    clientId: str | None = None
    deadlineSeconds: float = 5.0
    allowSystemActions: bool = False
    allowHttpLoopback: bool = False
    clientCertFile: str | None = None
    clientKeyFile: str | None = None


class ServicePatch(_Body):
    prefetch: list[str] | None = None
    scope: list[str] | None = None
    deadlineSeconds: float | None = None
    allowSystemActions: bool | None = None
    allowHttpLoopback: bool | None = None
    clientCertFile: str | None = None
    clientKeyFile: str | None = None
    enabled: bool | None = None


def service_id_or_404(service_id: str) -> str:
    """A path's service id; one that cannot be a registry key is simply not found."""
    if not re.fullmatch(SERVICE_ID, service_id):
        raise NotFound(f"no CDS Service {service_id[:128]!r}")
    return service_id


async def parse_body(request: Request, model: type[M]) -> M:
    # At most max_body_bytes, nested at most max_json_depth: BodyLimitMiddleware saw to both.
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from None


# --- the hook ------------------------------------------------------------------------------------


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


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.post("/hooks/{hook}")
    async def fire_hook(hook: str, request: Request, principal: PrincipalDep, runtime: RuntimeDep) -> JSONResponse:
        if hook not in HOOKS:
            raise NotFound(f"hook {hook!r} is not one this EHR fires")
        body = await parse_body(request, HookRequest)
        user_ref = _acting_user(principal, body.userId)
        context = hook_context(hook, user_ref, body)
        registry: Registry = request.app.state.registry
        services = await registry.enabled_for(hook, body.services)
        call = HookCall(hook, str(uuid.uuid4()), user_ref, body.patientId, context)
        # The session's own token stands for the user only when the hook fires for that user (an
        # admin session naming someone else gets a user assertion for them instead).
        user_token = principal.session_token if user_ref == principal.user_ref else None
        results: list[dict[str, Any]] = []
        if services:
            engine: HookEngine = request.app.state.engine
            outcome = await engine.run_hook(call, services, user_token=user_token)
            await exchange_log.record(runtime.sessions, outcome, int(runtime.clock()))
            by_id = {s.service_id: s for s in services}
            actions: CardActions = request.app.state.card_actions
            for result in outcome.results:
                applied = None
                if result.service_id in by_id:
                    applied = await apply_system_actions(actions, by_id[result.service_id], call, result, user_token)
                if applied is not None and result.system_actions_result is None:
                    # What was written (or why not) joins the exchange's record.
                    await exchange_log.record_system_actions(
                        runtime.sessions, call.hook_instance, result.service_id, applied
                    )
                results.append(result_json(result, applied))
        return JSONResponse({"hookInstance": call.hook_instance, "hook": hook, "services": results})

    # --- cards ----------------------------------------------------------------------------------

    @router.post("/suggestions/accept")
    async def accept(request: Request, principal: PrincipalDep) -> JSONResponse:
        body = await parse_body(request, AcceptRequest)
        actions: CardActions = request.app.state.card_actions
        ref = CardRef(body.hookInstance, body.serviceId, body.cardUuid, body.cardIndex)
        which = SuggestionRef(body.suggestionUuid, body.suggestionIndex)
        return JSONResponse(await actions.accept(principal, ref, which, body.userId))

    @router.post("/feedback")
    async def feedback(request: Request, principal: PrincipalDep) -> JSONResponse:
        body = await parse_body(request, FeedbackRequest)
        actions: CardActions = request.app.state.card_actions
        ref = CardRef(body.hookInstance, body.serviceId, body.cardUuid, body.cardIndex)
        reason = body.overrideReason.model_dump(exclude_none=True) if body.overrideReason else None
        return JSONResponse(await actions.override(principal, ref, reason, body.userComment, body.userId))

    # --- the exchange log ---------------------------------------------------------------------------

    @router.get("/exchanges")
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

    @router.get("/exchanges/{hook_instance}")
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

    @router.get("/services")
    async def list_services(request: Request, _admin: AdminDep) -> JSONResponse:
        registry: Registry = request.app.state.registry
        return JSONResponse({"services": await registry.list_all()})

    @router.post("/services")
    async def add_service(request: Request, _admin: AdminDep) -> JSONResponse:
        body = await parse_body(request, ServiceAdd)
        registry: Registry = request.app.state.registry
        approval = Approval(
            hooks=tuple(body.hooks),
            prefetch=tuple(body.prefetch),
            approve_all_prefetch=body.approveAllPrefetch,
            scope=tuple(body.scope),
            service_scopes={k: tuple(v) for k, v in body.serviceScopes.items()},
            client_id=body.clientId,
            deadline_seconds=body.deadlineSeconds,
            allow_system_actions=body.allowSystemActions,
            allow_http_loopback=body.allowHttpLoopback,
            client_cert_file=body.clientCertFile,
            client_key_file=body.clientKeyFile,
        )
        registration = await registry.add(body.discoveryUrl, approval)
        return JSONResponse(registration.as_json(), status_code=201)

    @router.patch("/services/{service_id}")
    async def patch_service(service_id: str, request: Request, _admin: AdminDep) -> JSONResponse:
        service_id = service_id_or_404(service_id)
        body = await parse_body(request, ServicePatch)
        registry: Registry = request.app.state.registry
        updated = await registry.update(service_id, body.model_dump(exclude_unset=True))
        engine: HookEngine = request.app.state.engine
        await engine.forget_service(service_id)  # a client kept for its old certificate is closed
        return JSONResponse(updated)

    @router.post("/services/{service_id}/disable")
    async def disable_service(service_id: str, request: Request, _admin: AdminDep) -> JSONResponse:
        registry: Registry = request.app.state.registry
        service_id = service_id_or_404(service_id)
        disabled = await registry.disable(service_id)
        engine: HookEngine = request.app.state.engine
        await engine.forget_service(service_id)
        return JSONResponse(disabled)

    @router.delete("/services/{service_id}")
    async def remove_service(service_id: str, request: Request, _admin: AdminDep) -> JSONResponse:
        registry: Registry = request.app.state.registry
        service_id = service_id_or_404(service_id)
        removed = await registry.remove(service_id)
        engine: HookEngine = request.app.state.engine
        await engine.forget_service(service_id)
        return JSONResponse(removed)

    return router
