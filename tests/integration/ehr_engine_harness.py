"""For the EHR engine tests: the real authorization and FHIR servers in-process (fhirharness), the
EHR's key store on the same database, and CDS Service doubles in uvicorn on 127.0.0.1 sockets.

The doubles record every request they receive (path, headers, body), so tests assert what a
service was sent — and what it was never sent. Each path is one behaviour: a good service, or
one of the faults the engine must survive.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from authserver import clients
from authserver.clients import Client
from authserver.reach import FhirReach
from common.clock import Clock
from common.jose import KeySet, import_public_jwks
from common.keys import KeyStore, ensure_active_key
from ehr.exchange import HookCall, ServiceConfig
from ehr.invoke import CdsEngine
from ehr.settings import EhrSettings
from tests.integration.fhirharness import AUTH, FHIR, FHIR_ORIGIN, FhirHarness, fhir_harness

EHR = "https://ehr.test"
SCOPES = "patient/Patient.rs patient/Observation.rs patient/Condition.rs"


def migrated(directory: Path) -> str:
    """A SQLite database migrated to head in `directory` (for module-scoped stacks)."""
    from mockehr import migrate

    url = f"sqlite:///{directory / 'test.db'}"
    migrate.upgrade(url)
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(
    app: Any, *, certfile: Path | None = None, keyfile: Path | None = None, client_ca: Path | None = None
) -> Iterator[int]:
    """Run `app` in uvicorn on 127.0.0.1 (TLS when a certificate is given); yield the port."""
    import ssl

    port = free_port()
    options: dict[str, Any] = {}
    if certfile is not None and keyfile is not None:
        options = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
        if client_ca is not None:
            options.update({"ssl_ca_certs": str(client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED})
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=1, **options,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the double did not start")
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(20)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def card_for(name: str, **extra: Any) -> dict[str, Any]:
    card = {"uuid": f"card-{name}", "summary": f"Card from {name}", "indicator": "info", "source": {"label": name}}
    card.update(extra)
    return card


@dataclass
class Doubles:
    """CDS Service doubles; `received` is every request any of them got."""

    received: list[Received] = field(default_factory=list)
    answers: dict[str, Callable[[dict[str, Any]], Any]] = field(default_factory=dict)

    def to(self, name: str) -> list[Received]:
        return [r for r in self.received if r.path == f"/cds-services/{name}"]

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            name = request.path_params["name"]
            raw = await request.body()
            try:
                body = json.loads(raw)
            except ValueError:
                body = {}
            self.received.append(Received(request.url.path, dict(request.headers), body))
            return await self.behave(name, body)

        return Starlette(routes=[Route("/cds-services/{name}", handle, methods=["POST"])])

    async def behave(self, name: str, body: dict[str, Any]) -> Response:
        if name in self.answers:
            return JSONResponse(self.answers[name](body))
        behaviour = BEHAVIOURS.get(name) or (_ok if name.startswith("ok") else _unknown)
        return await behaviour(self, name, body)


# One behaviour per path: a good service or one fault. Each receives the doubles (for the last
# request's headers), the service name and the parsed body.
Behaviour = Callable[[Doubles, str, dict[str, Any]], Awaitable[Response]]


async def _ok(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return JSONResponse({"cards": [card_for(name, detail=f"prefetch: {sorted(body.get('prefetch', {}))}")]})


async def _ok_echo(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    # A careless (or hostile) service that echoes the credentials it was sent.
    token = body.get("fhirAuthorization", {}).get("access_token", "")
    jwt = doubles.received[-1].headers.get("authorization", "").removeprefix("Bearer ")
    return JSONResponse({"cards": [card_for(name, detail=f"token {token} jwt {jwt}")], "echo": [token, jwt]})


async def _slow(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    await asyncio.sleep(30)
    return JSONResponse({"cards": [card_for(name)]})


async def _trickle(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    async def drip() -> AsyncIterator[bytes]:
        yield b'{"cards": ['
        for _ in range(300):
            await asyncio.sleep(0.1)
            yield b" "

    return StreamingResponse(drip(), media_type="application/json")


async def _error(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return Response("<html>Internal Server Error</html>", status_code=503, media_type="text/html")


async def _unauthorized(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return Response(status_code=401)


async def _invalid_json(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return Response('{"cards": [', media_type="application/json")


async def _wrong_type(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return Response(json.dumps({"cards": [card_for(name)]}), media_type="text/html")


async def _oversized(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    async def flood() -> AsyncIterator[bytes]:
        yield b'{"cards": [], "padding": "'
        for _ in range(64):
            yield b"x" * 65536
        yield b'"}'

    return StreamingResponse(flood(), media_type="application/json")


async def _oversized_declared(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return Response(b'{"cards": []}' + b" " * (2 * 1024 * 1024), media_type="application/json")


async def _echo_error(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    jwt = doubles.received[-1].headers.get("authorization", "")
    return Response(f"bad credentials: {jwt}", status_code=500)


async def _redirect(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return RedirectResponse("/cds-services/redirect-target", status_code=307)


async def _redirect_target(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return JSONResponse({"cards": [card_for(name)]})


async def _precondition(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return JSONResponse({"error": "need Observation prefetch"}, status_code=412)


async def _unknown(doubles: Doubles, name: str, body: dict[str, Any]) -> Response:
    return Response(status_code=404)


BEHAVIOURS: dict[str, Behaviour] = {
    "ok-echo": _ok_echo,
    "slow": _slow,
    "trickle": _trickle,
    "error": _error,
    "unauthorized": _unauthorized,
    "invalid-json": _invalid_json,
    "wrong-type": _wrong_type,
    "oversized": _oversized,
    "oversized-declared": _oversized_declared,
    "echo-error": _echo_error,
    "redirect": _redirect,
    "redirect-target": _redirect_target,
    "precondition": _precondition,
}


@dataclass
class EngineStack:
    fhir: FhirHarness
    engine: CdsEngine
    keys: KeyStore
    settings: EhrSettings
    clock: Clock

    async def jwks(self) -> KeySet:
        return import_public_jwks(await self.keys.jwks())

    def call(self, user: str, patient: str, **context: Any) -> HookCall:
        import uuid

        return HookCall(
            hook="patient-view",
            hook_instance=str(uuid.uuid4()),
            user_ref=user,
            patient_id=patient,
            context={"userId": user, "patientId": patient, **context},
        )


def service(base: str, name: str, **changes: Any) -> ServiceConfig:
    config = ServiceConfig(
        service_id=name,
        cds_id=name,
        hook="patient-view",
        url=f"{base}/cds-services/{name}",
        discovery_url=f"{base}/cds-services",
        client_id="cds-a",
        scope=SCOPES,
        deadline_seconds=3.0,
        allow_http_loopback=base.startswith("http://"),
    )
    return replace(config, **changes)


@asynccontextmanager
async def engine_stack(
    tmp_path: Path,
    database_url: str,
    *,
    total_deadline: float = 6.0,
    smart_urls: Callable[[], Any] | None = None,
    max_response_bytes: int = 1024 * 1024,
    service_http: httpx.AsyncClient | None = None,
    wrap_auth: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport] | None = None,
) -> AsyncIterator[EngineStack]:
    """fhirharness + the EHR's key (registered as client `ehr`) + two CDS Service clients + the engine."""
    async with fhir_harness(tmp_path, database_url) as fhir:
        runtime = fhir.auth_app.state.runtime
        settings = EhrSettings(
            data_dir=tmp_path,
            database_url=database_url,
            public_url=EHR,
            authserver_url=AUTH,
            fhir_base_url=FHIR,
            cds_total_deadline_seconds=total_deadline,
            cds_max_response_bytes=max_response_bytes,
            cds_link_hosts=["example.org"],
        )
        kek = settings.kek()
        await ensure_active_key(runtime.sessions, "ehr", "ES384", kek, int(fhir.clock()))
        keys = KeyStore(runtime.sessions, "ehr", kek, refresh_seconds=60, clock=fhir.clock)
        await keys.reload()
        async with runtime.sessions() as session, session.begin():
            await clients.register(
                session, Client("ehr", "ehr", "EHR", "private_key_jwt", "", True, True, jwks=await keys.jwks())
            )
            for client_id in ("cds-a", "cds-b"):
                await clients.register(
                    session, Client(client_id, "cds-service", client_id, "none", SCOPES, False, True)
                )
        to_fhir = httpx.AsyncClient(transport=httpx.ASGITransport(app=fhir.fhir_app), base_url=FHIR_ORIGIN)
        fhir.auth_app.state.auth.reach = FhirReach(to_fhir, runtime.signing_keys, AUTH, FHIR, fhir.clock)
        # The engine reaches the in-process authorization and FHIR servers through ASGI mounts.
        http = httpx.AsyncClient(
            mounts={
                AUTH: (wrap_auth or (lambda t: t))(httpx.ASGITransport(app=fhir.auth_app)),
                FHIR_ORIGIN: httpx.ASGITransport(app=fhir.fhir_app),
            },
            follow_redirects=False,
        )
        engine = CdsEngine(
            settings, http=http, keys=keys, clock=fhir.clock, smart_launch_urls=smart_urls, service_http=service_http
        )
        try:
            yield EngineStack(fhir, engine, keys, settings, fhir.clock)
        finally:
            await engine.aclose()
            await http.aclose()
            await to_fhir.aclose()
