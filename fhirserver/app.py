"""FHIR server application factory.

Run alone with `uvicorn --factory fhirserver.app:create_app` (settings from MOCKEHR_FHIR_*).
Without a token only /fhir/metadata and /fhir/.well-known/smart-configuration answer.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.app import service_app
from common.app_origins import registered_origins
from common.clock import Clock, system_clock
from common.cors import CorsMiddleware
from common.db import is_statement_timeout, make_sessionmaker, overload
from common.errors import BodyRefusedError
from common.health import Check
from common.http import make_http_client
from common.jwks import JwksCache
from common.overload import retry_later
from common.runtime import Runtime
from common.settings import load_settings
from fhirserver import rest
from fhirserver.audit import AuditWriter
from fhirserver.capability import capability_statement, smart_configuration
from fhirserver.errors import FhirError, Issue, operation_outcome
from fhirserver.guard import ForbiddenError, Guard, UnauthorizedError, UnavailableError
from fhirserver.negotiation import FHIR_JSON, check_accept
from fhirserver.revocations import RevocationWatcher
from fhirserver.search import COMPARTMENT_TYPES, patients_of_practitioner
from fhirserver.settings import FhirSettings

Handler = Callable[[Any, rest.Context], Awaitable[Response]]
_log = logging.getLogger(__name__)


def _outcome(status: int, code: str, diagnostics: str) -> Response:
    return rest.fhir_response(operation_outcome([Issue(diagnostics, code=code)]), status)


def _revocation_watcher(
    settings: FhirSettings, clock: Clock, authserver_client: httpx.AsyncClient | None
) -> RevocationWatcher:
    """Polling in a thread of its own with its own client (revocations.py): a poll that never
    queues behind requests, and whose every call gives up at the staleness limit. A client given
    for composing the services in one process is used on the caller's loop instead."""
    feed = f"{settings.authserver_url.rstrip('/')}/revocations"
    staleness = settings.revocation_max_staleness_seconds

    def own_client() -> httpx.AsyncClient:
        return make_http_client(ca_file=settings.ca_path, timeout=staleness)

    return RevocationWatcher(
        authserver_client,
        feed,
        clock=clock,
        poll_seconds=settings.revocation_poll_seconds,
        max_staleness=staleness,
        client_factory=None if authserver_client is not None else own_client,
    )


def create_app(
    settings: FhirSettings | None = None,
    *,
    clock: Clock = system_clock,
    authserver_client: httpx.AsyncClient | None = None,
) -> FastAPI:
    """`authserver_client` replaces the client used to reach the authorization server (JWKS and
    revocation feed) — for composing the services in one process."""
    settings = settings or load_settings(FhirSettings)
    started = dt.datetime.fromtimestamp(clock(), dt.UTC).isoformat(timespec="seconds")
    cursor_key = settings.cursor_secret()

    def on_start(app: FastAPI, runtime: Runtime) -> None:
        to_auth = authserver_client or runtime.http
        jwks = JwksCache(to_auth, settings.authserver_jwks_url, clock=clock)
        revocations = _revocation_watcher(settings, clock, authserver_client)
        audit = AuditWriter(runtime.sessions, clock)

        async def patients_of(practitioner_id: str) -> frozenset[str]:
            async with runtime.sessions() as session:
                return await patients_of_practitioner(session, practitioner_id)

        app.state.jwks, app.state.revocations, app.state.audit = jwks, revocations, audit
        # Reads run without BEGIN/COMMIT: two round trips fewer per request. Each statement is
        # consistent by itself, as under PostgreSQL's READ COMMITTED in a transaction.
        app.state.read_sessions = make_sessionmaker(runtime.engine.execution_options(isolation_level="AUTOCOMMIT"))
        app.state.guard = Guard(
            jwks=jwks,
            revocations=revocations,
            issuer=settings.authserver_url,
            fhir_base=settings.fhir_base_url,
            clock=clock,
            leeway=settings.jwt_leeway_seconds,
            patients_of=patients_of,
        )
        revocations.start()
        audit.start()

    async def on_stop(app: FastAPI) -> None:
        await app.state.revocations.stop()
        await app.state.audit.stop()

    def extra_checks(app: FastAPI) -> Mapping[str, Check]:
        async def authserver_keys() -> None:
            await app.state.jwks.key_set()

        async def revocation_feed() -> None:
            if not app.state.revocations.fresh():
                await app.state.revocations.poll_once()

        return {"authserver_jwks": authserver_keys, "revocation_feed": revocation_feed}

    app = service_app(
        settings,
        title="mockehr FHIR server",
        signing=False,
        clock=clock,
        on_start=on_start,
        on_stop=on_stop,
        extra_checks=extra_checks,
    )
    _handlers(app)
    # Outermost, so a preflight from an allowed origin (configured, or of a registered SMART app)
    # is answered before any route or guard.
    app.add_middleware(
        CorsMiddleware,
        origins=settings.cors_origins,
        methods_for=_cors_methods,
        allow_headers=("Authorization", "Content-Type", "Accept", "If-Match", "If-None-Exist", "Prefer"),
        expose_headers=("Location", "ETag", "Content-Location", "Last-Modified"),
        registered=registered_origins(app),
    )

    @app.get("/fhir/metadata")
    async def metadata() -> Response:
        return rest.fhir_response(capability_statement(settings, started))

    @app.get("/fhir/.well-known/smart-configuration")
    async def smart() -> JSONResponse:
        return JSONResponse(smart_configuration(settings), headers={"Cache-Control": "public, max-age=300"})

    async def guarded(
        request: Request,
        handler: Callable[[Any, rest.Context], Awaitable[Response]],
        *,
        interaction: str,
        target: str,
        read_only: bool = False,
    ) -> Response:
        check_accept(request)
        principal = await app.state.guard.principal(request.headers.get("authorization"))
        ctx = rest.Context(request, principal, app.state.guard, settings, app.state.audit, clock())
        runtime: Runtime = app.state.runtime
        status = 500
        try:
            if read_only:
                async with app.state.read_sessions() as session:
                    response = await handler(session, ctx)
            else:
                async with runtime.sessions() as session, session.begin():
                    response = await handler(session, ctx)
            status = response.status_code
            return response
        except FhirError as exc:
            status = exc.status
            raise
        except ForbiddenError:
            status = 403
            raise
        finally:
            ctx.record(interaction, target, status)

    @app.post("/fhir")
    async def bundle(request: Request) -> Response:
        check_accept(request)
        body = await rest._json_body(request, settings.max_json_depth)
        kind = body.get("type") if isinstance(body, dict) else None
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or kind not in ("batch", "transaction"):
            raise FhirError([Issue("POST to the base takes a batch or transaction Bundle", code="invalid")])
        entries = body.get("entry") or []
        if not isinstance(entries, list):  # FHIR R4 Bundle.entry is 0..*: a JSON array
            raise FhirError([Issue("Bundle.entry must be a list", code="invalid")])
        if len(entries) > settings.max_bundle_entries:
            raise FhirError(
                [Issue(f"a Bundle may hold at most {settings.max_bundle_entries} entries", code="too-costly")],
                status=413,
            )
        if kind == "batch":
            principal = await app.state.guard.principal(request.headers.get("authorization"))
            ctx = rest.Context(request, principal, app.state.guard, settings, app.state.audit, clock())
            response = await rest.batch(app.state.runtime.sessions, ctx, body, cursor_key)
            ctx.record("batch", f"Bundle ({len(body.get('entry') or [])} entries)", response.status_code)
            return response
        return await guarded(
            request, lambda s, c: rest.transaction(s, c, body), interaction="transaction", target="Bundle"
        )

    @app.get("/fhir/Patient/{rid}/$everything")
    async def everything(rid: str, request: Request) -> Response:
        return await guarded(
            request,
            lambda s, c: rest.everything(s, c, rid, COMPARTMENT_TYPES),
            interaction="operation",
            target=f"Patient/{rid}/$everything",
            read_only=True,
        )

    # The two hottest routes are plain Starlette routes: their parameters are plain strings, and
    # FastAPI's per-request dependency solving and validation would cost more than the guard.
    async def search_get(request: Request) -> Response:
        _get_only(request)
        rtype: str = request.path_params["rtype"]
        params = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "_format"]
        return await guarded(
            request,
            lambda s, c: rest.search_type(s, c, rtype, params, cursor_key),
            interaction="search-type",
            target=f"{rtype}?{request.url.query}",
            read_only=True,
        )

    app.router.add_route("/fhir/{rtype}", search_get, methods=["GET"])

    @app.post("/fhir/{rtype}/_search")
    async def search_post(rtype: str, request: Request) -> Response:
        form = await request.form()
        params = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "_format"]
        params += [(k, str(v)) for k, v in form.multi_items()]
        return await guarded(
            request,
            lambda s, c: rest.search_type(s, c, rtype, params, cursor_key),
            interaction="search-type",
            target=f"{rtype}/_search",
            read_only=True,
        )

    @app.get("/fhir/{rtype}/_history")
    async def history_type(rtype: str, request: Request) -> Response:
        return await guarded(
            request,
            lambda s, c: rest.type_history(s, c, rtype),
            interaction="history-type",
            target=f"{rtype}/_history",
            read_only=True,
        )

    async def read(request: Request) -> Response:
        _get_only(request)
        rtype: str = request.path_params["rtype"]
        rid: str = request.path_params["rid"]
        return await guarded(
            request,
            lambda s, c: rest.read(s, c, rtype, rid),
            interaction="read",
            target=f"{rtype}/{rid}",
            read_only=True,
        )

    app.router.add_route("/fhir/{rtype}/{rid}", read, methods=["GET"])

    @app.get("/fhir/{rtype}/{rid}/_history")
    async def history_instance(rtype: str, rid: str, request: Request) -> Response:
        return await guarded(
            request,
            lambda s, c: rest.instance_history(s, c, rtype, rid),
            interaction="history-instance",
            target=f"{rtype}/{rid}/_history",
            read_only=True,
        )

    @app.get("/fhir/{rtype}/{rid}/_history/{vid}")
    async def vread(rtype: str, rid: str, vid: str, request: Request) -> Response:
        return await guarded(
            request,
            lambda s, c: rest.vread(s, c, rtype, rid, vid),
            interaction="vread",
            target=f"{rtype}/{rid}/_history/{vid}",
            read_only=True,
        )

    @app.post("/fhir/{rtype}")
    async def create(rtype: str, request: Request) -> Response:
        body = await rest._json_body(request, settings.max_json_depth)
        return await guarded(request, lambda s, c: rest.create(s, c, rtype, body), interaction="create", target=rtype)

    @app.put("/fhir/{rtype}/{rid}")
    async def update(rtype: str, rid: str, request: Request) -> Response:
        body = await rest._json_body(request, settings.max_json_depth)
        return await guarded(
            request, lambda s, c: rest.update(s, c, rtype, rid, body), interaction="update", target=f"{rtype}/{rid}"
        )

    @app.delete("/fhir/{rtype}/{rid}")
    async def delete(rtype: str, rid: str, request: Request) -> Response:
        return await guarded(
            request, lambda s, c: rest.delete(s, c, rtype, rid), interaction="delete", target=f"{rtype}/{rid}"
        )

    return app


def _get_only(request: Request) -> None:
    """Starlette routes also take HEAD for GET; these answer it as before: 405."""
    if request.method != "GET":
        raise StarletteHTTPException(status_code=405)


def _cors_methods(path: str) -> str | None:
    """Every /fhir path takes part in CORS (metadata and smart-configuration included)."""
    return "GET, POST, PUT, DELETE, OPTIONS" if path == "/fhir" or path.startswith("/fhir/") else None


def _handlers(app: FastAPI) -> None:
    """One handler per failure kind; OperationOutcome everywhere but the bare 401."""

    @app.exception_handler(FhirError)
    async def fhir_error(_r: Request, exc: FhirError) -> Response:
        return rest.fhir_response(exc.outcome(), exc.status)

    @app.exception_handler(BodyRefusedError)
    async def body_refused(_r: Request, exc: BodyRefusedError) -> Response:
        return _outcome(exc.status, "too-costly", exc.message)

    @app.exception_handler(UnauthorizedError)
    async def unauthorized(_r: Request, _e: UnauthorizedError) -> Response:
        return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    @app.exception_handler(ForbiddenError)
    async def forbidden(_r: Request, _e: ForbiddenError) -> Response:
        return _outcome(403, "forbidden", "the token's scopes do not allow this interaction")

    @app.exception_handler(UnavailableError)
    async def unavailable(_r: Request, _e: UnavailableError) -> Response:
        return retry_later(_outcome(503, "transient", "authorization state is temporarily unavailable; retry"))

    @app.exception_handler(PoolTimeoutError)
    async def pool_exhausted(_r: Request, exc: PoolTimeoutError) -> Response:
        # No connection free within MOCKEHR_FHIR_DB_POOL_TIMEOUT_SECONDS: overload, not failure.
        return retry_later(_outcome(503, "transient", overload(exc) or "the server is busy; retry"))

    @app.exception_handler(DBAPIError)
    async def database_error(_r: Request, exc: DBAPIError) -> Response:
        if is_statement_timeout(exc):
            # The statement ran past MOCKEHR_FHIR_DB_STATEMENT_TIMEOUT_SECONDS and was stopped.
            outcome = _outcome(503, "too-costly", "the request took too long and was stopped; narrow it or retry later")
            return retry_later(outcome)
        _log.error("database error: %s", type(exc.orig).__name__)
        return _outcome(500, "exception", "the request failed")

    @app.exception_handler(RequestValidationError)
    async def invalid(_r: Request, _e: RequestValidationError) -> Response:
        return _outcome(400, "invalid", "the request is malformed")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return _outcome(404, "not-found", "no such endpoint")
        if exc.status_code == 405:
            return _outcome(405, "not-supported", "method not allowed here")
        return _outcome(exc.status_code, "processing", "request failed")


__all__ = ["FHIR_JSON", "create_app"]
