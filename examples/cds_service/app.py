"""Example CDS Service application factory.

Run alone with `python -m examples.cds_service` (MOCKEHR_CDS_*; see serve.py) or under
`uvicorn --factory examples.cds_service.app:create_app`.

Every route authenticates the CDS Client's JWT first (auth.py), so an unauthenticated caller
learns nothing — not even whether a service id exists or a body is valid: a bare 401. Only the
size and nesting of a body are checked before that (413, 400), so that a stranger cannot make the
service hold or parse more than its limits.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from common.bodies import parse_json
from common.clock import Clock, system_clock
from common.cors import CorsMiddleware
from common.errors import BodyRefusedError
from common.health import Check, health_router
from common.http import make_http_client
from common.logs import configure_logging
from common.middleware import SecurityHeadersMiddleware, limit_bodies
from common.replay import MemoryReplayStore, RedisReplayStore, ReplayStore
from common.settings import load_settings
from examples.cds_service.auth import TrustedClients, Unauthorized, authenticate
from examples.cds_service.cards import CallEnv
from examples.cds_service.errors import BadRequest, CdsError, DataUnavailable, TooLarge
from examples.cds_service.feedback import FeedbackLog, IssuedCards, RedisIssuedCards, inconsistency
from examples.cds_service.fhir_data import DataSource
from examples.cds_service.schemas import FHIR_ID, CdsResponse, FeedbackBody, HookRequest
from examples.cds_service.services import SERVICES
from examples.cds_service.settings import CdsSettings

log = logging.getLogger(__name__)


def _cors_methods(path: str) -> str | None:
    if path == "/cds-services":
        return "GET"
    if path.startswith("/cds-services/"):
        return "POST"
    return None


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


def create_app(
    settings: CdsSettings | None = None,
    *,
    clock: Clock = system_clock,
    http_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """The app. `http_client` (tests) replaces the outbound client used for JWKS and FHIR calls."""
    settings = settings or load_settings(CdsSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.service_name)
        own = http_client is None
        http = http_client or make_http_client(ca_file=settings.ca_path, timeout=settings.http_timeout_seconds)
        app.state.http = http
        app.state.trusted = TrustedClients(settings.clients, http, clock)
        replay: ReplayStore
        redis = None
        if settings.redis_url:
            from redis.asyncio import Redis

            redis = Redis.from_url(settings.redis_url)
            replay = RedisReplayStore(redis, "mockehr:cds-example:jti", clock)
            # Feedback may reach another replica than the one that issued the card.
            app.state.issued = RedisIssuedCards(redis, "mockehr:cds-example:card")
        else:
            replay = MemoryReplayStore(clock)
        app.state.replay = replay
        try:
            yield
        finally:
            if redis is not None:
                await redis.aclose()
            if own:
                await http.aclose()

    # No redirect_slashes: a redirect would be built from the Host header, before authentication.
    app = FastAPI(
        title="mockehr example CDS Service",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.clock = clock
    app.state.issued = IssuedCards(clock)
    app.state.feedback = FeedbackLog()
    # Bounded before the JWT is even looked at: a stranger cannot make this service hold more
    # than max_body_bytes, nor parse deeper than max_json_depth.
    limit_bodies(app, max_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)
    # Outermost: a preflight from a configured origin is answered before routing or auth
    # (a browser sends no Authorization header on a preflight).
    app.add_middleware(
        CorsMiddleware,
        origins=settings.cors_origins,
        methods_for=_cors_methods,
        allow_headers=("Authorization", "Content-Type", "Accept"),
    )

    @app.exception_handler(Unauthorized)
    async def unauthorized(_request: Request, _exc: Unauthorized) -> Response:
        # Bare 401: no body, no reason (CDS Hooks security: never tell an attacker what failed).
        return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(BodyRefusedError)
    async def body_refused(_request: Request, exc: BodyRefusedError) -> Response:
        refusal = TooLarge(exc.message) if exc.status == 413 else BadRequest(exc.message)
        return JSONResponse({"error": refusal.code, "message": refusal.message}, status_code=refusal.status)

    @app.exception_handler(CdsError)
    async def cds_error(_request: Request, exc: CdsError) -> Response:
        if isinstance(exc, DataUnavailable):
            log.info("%s: 412 (%s)", _request.url.path, exc.reason)
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)

    def checks() -> Mapping[str, Check]:
        primary = settings.primary_client
        if primary is None:
            return {}

        async def ehr_keys() -> None:
            await app.state.trusted.jwks(primary.issuer).key_set()

        # Only the primary CDS Client's keys: the others (e.g. the probe) are fetched when used.
        return {"ehr_jwks": ehr_keys}

    app.include_router(health_router(checks))

    async def auth(request: Request) -> None:
        await authenticate(request, settings, app.state.trusted, app.state.replay, clock)

    def not_found() -> JSONResponse:
        return JSONResponse({"error": "not_found", "message": "no such service"}, status_code=404)

    @app.get("/cds-services")
    async def discovery(request: Request) -> JSONResponse:
        await auth(request)
        return JSONResponse({"services": [s.definition.wire() for s in SERVICES.values()]})

    @app.post("/cds-services/{service_id}")
    async def call(service_id: str, request: Request) -> Response:
        await auth(request)
        service = SERVICES.get(service_id)
        if service is None:
            return not_found()
        try:
            hook_request = HookRequest.model_validate(await _json_body(request, settings.max_json_depth))
        except ValidationError as exc:
            raise BadRequest(_first_error(exc)) from None
        if hook_request.hook != service.hook:
            raise BadRequest(f"this service answers the {service.hook} hook only")
        patient_id = _check_patient(hook_request)
        user = hook_request.context.get("userId")
        env = CallEnv(
            today=dt.datetime.fromtimestamp(clock(), dt.UTC).date(),
            patient_id=patient_id,
            user_ref=user if isinstance(user, str) and user.startswith("Practitioner/") else None,
            smart_launch_url=settings.smart_launch_url,
        )
        data = DataSource(hook_request, app.state.http, settings)
        # DataUnavailable → 412 (CDS Hooks 2.0 §HTTP Response), bad context → 400 (cds_error).
        cards = await service.logic(data, env, hook_request)
        await app.state.issued.remember(service_id, cards)
        return JSONResponse(CdsResponse(cards=cards).wire())

    @app.post("/cds-services/{service_id}/feedback")
    async def feedback(service_id: str, request: Request) -> Response:
        await auth(request)
        if service_id not in SERVICES:
            return not_found()
        try:
            body = FeedbackBody.model_validate(await _json_body(request, settings.max_json_depth))
        except ValidationError as exc:
            raise BadRequest(_first_error(exc)) from None
        issued = [(item, await app.state.issued.get(item.card)) for item in body.feedback]
        for item, card in issued:
            problem = inconsistency(service_id, item, card)
            if problem is not None:
                raise BadRequest(problem)
        for item, card in issued:
            app.state.feedback.record(service_id, item, matched=card is not None)
            log.info("feedback %s: card %s %s", service_id, item.card, item.outcome)
        return Response(status_code=200)

    return app
