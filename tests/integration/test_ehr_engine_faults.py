"""Faults of CDS Services (issue 5, item 7): each yields no cards and a recorded reason for that
service only; the services around it answer as usual; the hook answers within its deadline, and
the per-call token handed to the faulty service is revoked all the same.

The stack (authorization + FHIR servers, seeded) is built once for the module on SQLite: what is
under test here is the engine's handling of the service, not the database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehr.exchange import ServiceResult
from fhirserver.state import fhir_state
from tests.integration.ehr_engine_harness import (
    Doubles,
    EngineStack,
    engine_stack,
    free_port,
    migrated,
    service,
)


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("faults")
    return directory, migrated(directory)


@pytest.fixture(scope="module")
async def stack(fault_dir: tuple[Path, str]) -> AsyncIterator[EngineStack]:
    async with engine_stack(fault_dir[0], fault_dir[1], total_deadline=6.0) as built:
        yield built


@pytest.fixture
def fresh_db(tmp_path: Path) -> str:
    return migrated(tmp_path)


def by_id(results: list[ServiceResult]) -> dict[str, ServiceResult]:
    return {r.service_id: r for r in results}


async def assert_revoked(stack: EngineStack, token: str) -> None:
    await stack.engine.settle()
    await fhir_state(stack.fhir.fhir_app).revocations.poll_once()
    patient = stack.fhir.patient_of(0)
    assert (await stack.fhir.get(f"Patient/{patient}", token)).status_code == 401


FAULTS: list[tuple[str, dict[str, Any], str, int | None]] = [
    ("slow", {"deadline_seconds": 1.0}, "no answer within the service deadline (1 s) (during service call)", None),
    ("trickle", {"deadline_seconds": 1.0}, "no answer within the service deadline (1 s) (during service call)", 200),
    ("error", {}, "service error (HTTP 503)", 503),
    ("unauthorized", {}, "service refused the EHR's credentials (401)", 401),
    ("invalid-json", {}, "invalid JSON in the response", 200),
    ("wrong-type", {}, "wrong content type (text/html; charset=utf-8); expected application/json", 200),
    ("oversized", {}, "response larger than 1048576 bytes", 200),
    ("oversized-declared", {}, "response larger than 1048576 bytes", 200),
    ("redirect", {}, "service answered a redirect (307); not followed", 307),
    ("precondition", {}, "service lacks data it needs (412)", 412),
]


@pytest.mark.parametrize(("name", "changes", "reason", "status"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_a_faulty_service_yields_no_cards_and_a_reason_and_the_others_are_unaffected(
    stack: EngineStack,
    doubles: tuple[Doubles, str],
    name: str,
    changes: dict[str, Any],
    reason: str,
    status: int | None,
) -> None:
    found, base = doubles
    found.received.clear()
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    services = [service(base, "ok-a"), service(base, name, **changes), service(base, "ok-b", client_id="cds-b")]
    outcome = await stack.engine.run_hook(stack.call(user, mine), services)

    results = by_id(outcome.results)
    assert [r.service_id for r in outcome.results] == ["ok-a", name, "ok-b"]
    faulty = results[name]
    assert faulty.status == "error"
    assert faulty.reason == reason
    assert faulty.http_status == status
    assert faulty.cards == [] and faulty.system_actions == []
    for ok in ("ok-a", "ok-b"):
        assert results[ok].status == "ok", results[ok].reason
        assert [c["uuid"] for c in results[ok].cards] == [f"card-{ok}"]
    # The faulty service was called once (never retried) and its token is dead now.
    [received] = found.to(name)
    await assert_revoked(stack, received.body["fhirAuthorization"]["access_token"])


async def test_a_redirect_is_never_followed_so_credentials_are_never_resent(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    found.received.clear()
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "redirect")])
    assert outcome.results[0].reason == "service answered a redirect (307); not followed"
    assert found.to("redirect-target") == []
    assert [r.path for r in found.received] == ["/cds-services/redirect"]


async def test_an_error_answer_is_recorded_truncated(stack: EngineStack, doubles: tuple[Doubles, str]) -> None:
    _, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "error")])
    assert outcome.results[0].response == "<html>Internal Server Error</html>"


async def test_a_service_that_is_down_yields_no_cards_and_the_others_are_unaffected(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    _, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    down = service(f"http://127.0.0.1:{free_port()}", "down")
    outcome = await stack.engine.run_hook(stack.call(user, mine), [down, service(base, "ok-a")])
    results = by_id(outcome.results)
    assert results["down"].status == "error"
    assert results["down"].reason == "service unreachable (ConnectError)"
    assert results["down"].cards == []
    assert results["ok-a"].status == "ok"
    # Its token was obtained and revoked: the record shows a revocation took place.
    assert results["down"].timings.token_ms is not None and results["down"].timings.revoke_ms is not None


async def test_every_fault_at_once_and_the_hook_still_answers_within_its_total_deadline(
    tmp_path: Path, fresh_db: str, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    found.received.clear()
    async with engine_stack(tmp_path, fresh_db, total_deadline=2.0) as stack:
        user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
        # Service deadlines far beyond the total: the total deadline is what cuts the slow ones.
        names = [f[0] for f in FAULTS]
        services = [service(base, n, deadline_seconds=30.0) for n in names]
        services.append(service(f"http://127.0.0.1:{free_port()}", "down", deadline_seconds=30.0))
        services.append(service(base, "ok-a", deadline_seconds=30.0))
        outcome = await stack.engine.run_hook(stack.call(user, mine), services)
        results = by_id(outcome.results)
        assert results["ok-a"].status == "ok"
        assert [c["uuid"] for c in results["ok-a"].cards] == ["card-ok-a"]
        cut = "no answer within the hook's total deadline (2 s) (during service call)"
        assert results["slow"].reason == results["trickle"].reason == cut
        for name, _, reason, _ in FAULTS:
            if name not in ("slow", "trickle"):
                assert results[name].reason == reason
        assert all(r.status == "error" for r in outcome.results if r.service_id != "ok-a")
        # Revocations that did not fit in the deadline finish afterwards.
        for name in ("slow", "trickle"):
            [received] = found.to(name)
            await assert_revoked(stack, received.body["fhirAuthorization"]["access_token"])


async def test_a_412_is_recorded_and_not_retried(stack: EngineStack, doubles: tuple[Doubles, str]) -> None:
    found, base = doubles
    found.received.clear()
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "precondition")])
    assert outcome.results[0].reason == "service lacks data it needs (412)"
    assert outcome.results[0].response == '{"error":"need Observation prefetch"}'
    assert len(found.to("precondition")) == 1


class _HeldTokenAnswers(httpx.AsyncBaseTransport):
    """The authorization server issues the token but its answer is held until `release`: the
    deadline of the hook strikes while the exchange is in flight."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.issued: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path == "/token" and b"token-exchange" in request.content:
            body = await response.aread()
            self.issued.append(json.loads(body)["access_token"])
            await self.release.wait()
            return httpx.Response(response.status_code, headers=response.headers, content=body)
        return response


async def test_a_token_issued_after_the_deadline_struck_is_revoked_when_it_arrives(
    tmp_path: Path, fresh_db: str, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    held: list[_HeldTokenAnswers] = []

    def hold(inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        held.append(_HeldTokenAnswers(inner))
        return held[0]

    async with engine_stack(tmp_path, fresh_db, total_deadline=0.5, wrap_auth=hold) as stack:
        found.received.clear()
        user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
        outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-a")])
        [result] = outcome.results
        assert result.status == "error"
        assert result.reason == "no answer within the hook's total deadline (0.5 s) (during token exchange)"
        assert found.to("ok-a") == []  # the service was never called
        [token] = held[0].issued  # the authorization server did issue a token...
        held[0].release.set()  # ...which reaches the EHR only now
        await assert_revoked(stack, token)  # and is revoked on arrival
