"""Example CDS Service application factory.

Run alone with `uvicorn --factory examples.cds_service.app:create_app` (MOCKEHR_CDS_*).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from common.clock import Clock, system_clock
from common.health import Check, health_router
from common.http import make_http_client
from common.jwks import JwksCache
from common.logs import configure_logging
from common.middleware import SecurityHeadersMiddleware
from common.replay import MemoryReplayStore, RedisReplayStore, ReplayStore
from common.settings import load_settings
from examples.cds_service.auth import Unauthorized, authenticate
from examples.cds_service.services import SERVICES, patient_greeting_cards
from examples.cds_service.settings import CdsSettings


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": "invalid_request", "message": message}, status_code=400)


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        body: Any = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def create_app(settings: CdsSettings | None = None, *, clock: Clock = system_clock) -> FastAPI:
    settings = settings or load_settings(CdsSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.service_name)
        async with make_http_client(ca_file=settings.ca_path, timeout=settings.http_timeout_seconds) as http:
            app.state.jwks = JwksCache(http, settings.ehr_jwks_url, clock=clock)
            replay: ReplayStore
            if settings.redis_url:
                from redis.asyncio import Redis

                redis = Redis.from_url(settings.redis_url)
                replay = RedisReplayStore(redis, "mockehr:cds-example:jti", clock)
            else:
                redis = None
                replay = MemoryReplayStore(clock)
            app.state.replay = replay
            try:
                yield
            finally:
                if redis is not None:
                    await redis.aclose()

    app = FastAPI(
        title="mockehr example CDS Service", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings
    app.state.clock = clock
    app.state.feedback = []
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)

    @app.exception_handler(Unauthorized)
    async def unauthorized(_request: Request, _exc: Unauthorized) -> Response:
        # Bare 401: no body, no reason (CDS Hooks security: never tell an attacker what failed).
        return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def ehr_keys() -> None:
        await app.state.jwks.key_set()

    def checks() -> Mapping[str, Check]:
        return {"ehr_jwks": ehr_keys}

    app.include_router(health_router(checks))

    async def auth(request: Request) -> dict[str, object]:
        return await authenticate(request, settings, app.state.jwks, app.state.replay)

    @app.get("/cds-services")
    async def discovery(request: Request) -> JSONResponse:
        await auth(request)
        return JSONResponse({"services": list(SERVICES.values())})

    @app.post("/cds-services/{service_id}")
    async def call(service_id: str, request: Request) -> JSONResponse:
        await auth(request)
        if service_id not in SERVICES:
            return JSONResponse({"error": "not_found"}, status_code=404)
        body = await _json_object(request)
        if body is None:
            return _bad_request("body is not a JSON object")
        if body.get("hook") != SERVICES[service_id]["hook"]:
            return _bad_request("hook does not match this service")
        if not isinstance(body.get("hookInstance"), str) or not isinstance(body.get("context"), dict):
            return _bad_request("hookInstance and context are required")
        patient = (body.get("prefetch") or {}).get("patient")
        if not isinstance(patient, dict) or patient.get("resourceType") != "Patient":
            # CDS Hooks 2.0 §Prefetch: a service that lacks data it needs answers 412.
            return JSONResponse({"error": "prefetch.patient required"}, status_code=412)
        today = dt.datetime.fromtimestamp(clock(), dt.UTC).date()
        return JSONResponse({"cards": patient_greeting_cards(patient, today)})

    @app.post("/cds-services/{service_id}/feedback")
    async def feedback(service_id: str, request: Request) -> Response:
        await auth(request)
        if service_id not in SERVICES:
            return JSONResponse({"error": "not_found"}, status_code=404)
        body = await _json_object(request)
        if body is None or not isinstance(body.get("feedback"), list):
            return _bad_request("feedback must be a list")
        app.state.feedback.extend(body["feedback"][:100])
        del app.state.feedback[:-1000]
        return Response(status_code=200)

    return app
