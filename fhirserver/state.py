"""The FHIR server's typed state: what its lifespan opens, and the dependencies that hand it out.

One `FhirState` per app, built when the runtime opens (`open_state`) and stopped with it
(`close_state`); routes receive it through `StateDep`, never through attributes of `app.state`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.clock import Clock
from common.db import make_sessionmaker
from common.health import Check
from common.http import make_http_client
from common.jwks import JwksCache
from common.runtime import Runtime
from fhirserver.audit import AuditWriter
from fhirserver.compartments import patients_of_practitioner
from fhirserver.guard import Guard
from fhirserver.revocations import RevocationWatcher
from fhirserver.settings import FhirSettings

__all__ = ["FhirState", "StateDep", "close_state", "fhir_state", "get_state", "open_state", "readiness_checks"]


@dataclass(frozen=True)
class FhirState:
    settings: FhirSettings
    clock: Clock
    started: str  # the CapabilityStatement's date: when this server started
    cursor_key: bytes  # HMAC key of paging links (fhirserver.cursor)
    runtime: Runtime
    # Reads run without BEGIN/COMMIT: two round trips fewer per request. Each statement is
    # consistent by itself, as under PostgreSQL's READ COMMITTED in a transaction.
    read_sessions: async_sessionmaker[AsyncSession]
    jwks: JwksCache
    revocations: RevocationWatcher
    audit: AuditWriter
    guard: Guard


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


def open_state(
    settings: FhirSettings,
    runtime: Runtime,
    *,
    clock: Clock,
    cursor_key: bytes,
    authserver_client: httpx.AsyncClient | None = None,
) -> FhirState:
    """Build the state and start its background tasks (the revocation poller, the audit writer)."""
    to_auth = authserver_client or runtime.http
    jwks = JwksCache(to_auth, settings.authserver_jwks_url, clock=clock)
    revocations = _revocation_watcher(settings, clock, authserver_client)
    audit = AuditWriter(runtime.sessions, clock)

    async def patients_of(practitioner_id: str) -> frozenset[str]:
        async with runtime.sessions() as session:
            return await patients_of_practitioner(session, practitioner_id)

    guard = Guard(
        jwks=jwks,
        revocations=revocations,
        issuer=settings.authserver_url,
        fhir_base=settings.fhir_base_url,
        clock=clock,
        leeway=settings.jwt_leeway_seconds,
        patients_of=patients_of,
    )
    state = FhirState(
        settings=settings,
        clock=clock,
        started=dt.datetime.fromtimestamp(clock(), dt.UTC).isoformat(timespec="seconds"),
        cursor_key=cursor_key,
        runtime=runtime,
        read_sessions=make_sessionmaker(runtime.engine.execution_options(isolation_level="AUTOCOMMIT")),
        jwks=jwks,
        revocations=revocations,
        audit=audit,
        guard=guard,
    )
    revocations.start()
    audit.start()
    return state


async def close_state(state: FhirState) -> None:
    await state.revocations.stop()
    await state.audit.stop()


def readiness_checks(state: FhirState) -> Mapping[str, Check]:
    """Ready when the authorization server's keys and its revocation feed are reachable."""

    async def authserver_keys() -> None:
        await state.jwks.key_set()

    async def revocation_feed() -> None:
        if not state.revocations.fresh():
            await state.revocations.poll_once()

    return {"authserver_jwks": authserver_keys, "revocation_feed": revocation_feed}


def fhir_state(app: FastAPI | Any) -> FhirState:
    """The state of a running FHIR server app (its lifespan has started)."""
    state: FhirState = app.state.fhir
    return state


def get_state(request: Request) -> FhirState:
    return fhir_state(request.app)


StateDep = Annotated[FhirState, Depends(get_state)]
