"""Overload is 503 with Retry-After in each service's protocol, never 500 (issue 18, item 5).

The soak of issue 18 exhausted the EHR's pool (10 + 10 connections), and it answered 500. Here
each service runs with one pooled connection (plus one of overflow) and a short pool timeout; the
test holds both connections, as a burst of slow requests would, and asks for something that
needs the database. A statement stopped at the statement timeout (a table locked by another
session, PostgreSQL) is overload too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.ehrharness import EhrHarness, ehr_harness

Ask = Callable[[EhrHarness], Awaitable[httpx.Response]]


@pytest.fixture
def small_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in ("AUTH", "FHIR", "EHR"):
        monkeypatch.setenv(f"MOCKEHR_{service}_DB_POOL_SIZE", "1")
        monkeypatch.setenv(f"MOCKEHR_{service}_DB_POOL_TIMEOUT_SECONDS", "0.2")
        monkeypatch.setenv(f"MOCKEHR_{service}_DB_STATEMENT_TIMEOUT_SECONDS", "0.5")


@asynccontextmanager
async def every_connection_taken(app: FastAPI) -> AsyncIterator[None]:
    engine: AsyncEngine = app.state.runtime.engine
    async with AsyncExitStack() as held:
        for _ in range(2):  # db_pool_size 1, and as many again of overflow
            await held.enter_async_context(engine.connect())
        yield


def _oauth_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "temporarily_unavailable"


def _fhir_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"


def _ehr_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == "unavailable"


async def _ask_authserver(h: EhrHarness) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=h.fhir.auth_app), base_url="https://auth.test") as c:
        return await c.get("/revocations")


async def _ask_fhir(h: EhrHarness) -> httpx.Response:
    token = await h.fhir.token("system/*.cruds")
    return await h.fhir.client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})


async def _ask_ehr(h: EhrHarness) -> httpx.Response:
    return await h.ehr.get("/api/services", headers=h.admin)


SERVICES: dict[str, tuple[Callable[[EhrHarness], FastAPI], Ask, Callable[[httpx.Response], None], str]] = {
    "authserver": (lambda h: h.fhir.auth_app, _ask_authserver, _oauth_503, "oauth_revocations"),
    "fhirserver": (lambda h: h.fhir.fhir_app, _ask_fhir, _fhir_503, "fhir_resources"),
    "ehr": (lambda h: h.ehr_app, _ask_ehr, _ehr_503, "ehr_cds_services"),
}


@pytest.mark.parametrize("service", SERVICES)
async def test_a_request_that_finds_every_connection_busy_gets_503_with_retry_after_in_its_protocol(
    tmp_path: Path, database_url: str, small_pools: None, service: str
) -> None:
    app_of, ask, check, _table = SERVICES[service]
    async with ehr_harness(tmp_path, database_url) as h:
        before = await ask(h)
        assert before.status_code == 200, before.text
        async with every_connection_taken(app_of(h)):
            check(await ask(h))
        after = await ask(h)  # the connections are back: the service answers again
        assert after.status_code == 200, after.text


@pytest.mark.parametrize("service", SERVICES)
async def test_a_statement_stopped_at_the_statement_timeout_gets_503_with_retry_after_in_its_protocol(
    tmp_path: Path, database_url: str, small_pools: None, service: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a reader cannot be blocked on SQLite (WAL); tests/integration/test_db_bounds.py covers it")
    _app_of, ask, check, table = SERVICES[service]
    async with ehr_harness(tmp_path, database_url) as h:
        locker: Any = await asyncpg.connect(database_url.replace("postgresql://", "postgres://", 1))
        try:
            async with locker.transaction():
                await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                check(await ask(h))
        finally:
            await locker.close()
        after = await ask(h)
        assert after.status_code == 200, after.text
