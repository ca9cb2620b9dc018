"""The EHR in-process with the real authorization server and FHIR server (fhirharness) and a CDS
Service double, all reached through one routing transport by host name.

The double records every request it receives (headers included), so tests assert what a
service actually got: the JWT, the body, the feedback.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from authserver import clients
from authserver.clients import Client
from authserver.reach import FhirReach
from ehr.app import create_app
from ehr.settings import EhrSettings
from tests.integration.apps import serving
from tests.integration.fhirharness import AUTH, FHIR, FHIR_ORIGIN, FhirHarness, fhir_harness

EHR = "https://ehr.test"
CDS = "https://cds.test"
DISCOVERY = f"{CDS}/cds-services"


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class CdsDouble:
    """A CDS Service: discovery lists `services`; each call answers `answers[id](body)`."""

    services: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, Callable[[dict[str, Any]], Response | Awaitable[Response]]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    discovery_status: list[int] = field(default_factory=list)  # statuses to answer first, in order
    discovery_body: tuple[bytes, str] | None = None  # a raw discovery answer (body, content type)

    def calls(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def app(self) -> FastAPI:
        app = FastAPI()

        async def remember(request: Request) -> Any:
            raw = await request.body()
            body = json.loads(raw) if raw else None
            self.received.append(Received(request.method, request.url.path, dict(request.headers), body))
            return body

        @app.get("/cds-services")
        async def discovery(request: Request) -> Response:
            await remember(request)
            if self.discovery_status:
                status = self.discovery_status.pop(0)
                headers = {"Location": "https://elsewhere.test/cds-services"} if 300 <= status < 400 else {}
                return Response(status_code=status, headers=headers)
            if self.discovery_body is not None:
                return Response(self.discovery_body[0], media_type=self.discovery_body[1])
            return JSONResponse({"services": self.services})

        @app.post("/cds-services/{service_id}")
        async def call(service_id: str, request: Request) -> Response:
            body = await remember(request)
            answer = self.answers.get(service_id)
            if answer is None:
                return JSONResponse({"cards": []})
            result = answer(body)
            # An async answer acts during the exchange (e.g. reads FHIR with fhirAuthorization).
            return await result if inspect.isawaitable(result) else result

        @app.post("/cds-services/{service_id}/feedback")
        async def feedback(service_id: str, request: Request) -> Response:
            await remember(request)
            return Response(status_code=200)

        return app


class Router(httpx.AsyncBaseTransport):
    """Dispatches each request to the in-process app serving its host."""

    def __init__(self, apps: dict[str, FastAPI]) -> None:
        self._transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self._transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no route to {request.url.host}", request=request)
        return await transport.handle_async_request(request)


@dataclass
class EhrHarness:
    ehr: httpx.AsyncClient
    ehr_app: Any
    fhir: FhirHarness
    cds: CdsDouble
    admin_token: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def add_service(self, **approval: Any) -> httpx.Response:
        body = {"discoveryUrl": DISCOVERY, "clientId": "cds-double", **approval}
        return await self.ehr.post("/api/services", json=body, headers=self.admin)

    async def fire(self, hook: str = "patient-view", **body: Any) -> httpx.Response:
        return await self.ehr.post(f"/api/hooks/{hook}", json=body, headers=self.admin)

    async def fhir_read(self, path: str, **params: Any) -> httpx.Response:
        token = await self.fhir.token("system/*.rs")
        return await self.fhir.get(path, token, **params)


@asynccontextmanager
async def ehr_harness(tmp_path: Path, database_url: str, cds: CdsDouble | None = None) -> AsyncIterator[EhrHarness]:
    cds = cds or CdsDouble()
    async with fhir_harness(tmp_path, database_url) as fhir:
        auth_runtime = fhir.auth_app.state.runtime
        to_fhir = httpx.AsyncClient(transport=httpx.ASGITransport(app=fhir.fhir_app), base_url=FHIR_ORIGIN)
        fhir.auth_app.state.auth.reach = FhirReach(to_fhir, auth_runtime.signing_keys, AUTH, FHIR, fhir.clock)
        router = Router({"auth.test": fhir.auth_app, "fhir.test": fhir.fhir_app, "cds.test": cds.app()})
        settings = EhrSettings(
            data_dir=tmp_path, database_url=database_url, public_url=EHR, authserver_url=AUTH, fhir_base_url=FHIR
        )
        ehr_app = create_app(settings, clock=fhir.clock, transport=router)
        async with serving(ehr_app, EHR) as ehr:
            jwks = (await ehr.get("/.well-known/jwks.json")).json()
            async with auth_runtime.sessions() as session, session.begin():
                await clients.register(
                    session, Client("ehr", "ehr", "EHR", "private_key_jwt", "", True, True, jwks=jwks)
                )
            try:
                yield EhrHarness(ehr, ehr_app, fhir, cds, settings.admin_secret())
            finally:
                await to_fhir.aclose()


def greeting_service(service_id: str = "greeting", hook: str = "patient-view") -> dict[str, Any]:
    return {
        "hook": hook,
        "id": service_id,
        "title": "Greeting",
        "description": "Greets the patient",
        "prefetch": {"patient": "Patient/{{context.patientId}}"},
    }


def card(card_uuid: str = "card-1", **extra: Any) -> dict[str, Any]:
    return {
        "uuid": card_uuid,
        "summary": "Consider a follow-up",
        "indicator": "info",
        "source": {"label": "Double"},
        **extra,
    }


def answer_cards(*cards: dict[str, Any], **extra: Any) -> Callable[[dict[str, Any]], Response]:
    return lambda _body: JSONResponse({"cards": list(cards), **extra})
