"""The engine against the reference CDS Service (examples/cds_service), a careful verifier: its JWT
checks (iss pinned to the EHR's JWKS URL, algorithm allow-list, aud = its own URL, jti replay
cache) accept what the engine sends; its prefetch templates pass the EHR's allowed-forms check;
with part of its prefetch withheld it falls back to the FHIR server with fhirAuthorization; when
it cannot get data it answers 412, which the engine records without retrying.

The service runs in-process; its outbound client reaches the EHR's JWKS and the real FHIR server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.jose import unverified_claims
from ehr.exchange import ServiceConfig
from ehr.prefetch import check_template
from examples.cds_service import greeting, results
from examples.cds_service.app import create_app as create_cds
from examples.cds_service.settings import CdsSettings
from fhirserver.state import fhir_state
from tests.integration.apps import serving
from tests.integration.ehr_engine_harness import EHR, SCOPES, EngineStack, engine_stack
from tests.integration.fhirharness import FHIR

CDS = "https://cds.test"
CDS_NO_FHIR = "https://cds-nofhir.test"


@dataclass
class Outbound(httpx.AsyncBaseTransport):
    """The example service's outbound calls: the EHR's JWKS and the FHIR server, recorded."""

    jwks: dict[str, Any] = field(default_factory=dict)
    fhir: httpx.AsyncBaseTransport | None = None
    seen: list[httpx.Request] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if str(request.url) == f"{EHR}/.well-known/jwks.json":
            return httpx.Response(200, json=self.jwks)
        if request.url.host == "fhir.test" and self.fhir is not None:
            return await self.fhir.handle_async_request(request)
        return httpx.Response(404)


@dataclass
class ExampleStack:
    stack: EngineStack
    outbound: Outbound


@pytest.fixture
async def example(tmp_path: Path, database_url: str) -> AsyncIterator[ExampleStack]:
    outbound = Outbound()

    def settings(public_url: str, fhir_servers: list[str]) -> CdsSettings:
        return CdsSettings(
            data_dir=tmp_path,
            public_url=public_url,
            ehr_issuer=EHR,
            ehr_jwks_url=f"{EHR}/.well-known/jwks.json",
            fhir_servers=fhir_servers,
        )

    async with AsyncExitStack() as exits:
        to_service = await exits.enter_async_context(httpx.AsyncClient(transport=outbound))
        cds = create_cds(settings(CDS, [FHIR]), http_client=to_service)
        cds_no_fhir = create_cds(settings(CDS_NO_FHIR, ["https://elsewhere.example/fhir"]), http_client=to_service)
        service_http = await exits.enter_async_context(
            httpx.AsyncClient(
                mounts={CDS: httpx.ASGITransport(app=cds), CDS_NO_FHIR: httpx.ASGITransport(app=cds_no_fhir)},
                follow_redirects=False,
            )
        )
        stack = await exits.enter_async_context(engine_stack(tmp_path, database_url, service_http=service_http))
        outbound.jwks = await stack.keys.jwks()
        outbound.fhir = httpx.ASGITransport(app=stack.fhir.fhir_app)
        await exits.enter_async_context(serving(cds, CDS))
        await exits.enter_async_context(serving(cds_no_fhir, CDS_NO_FHIR))
        yield ExampleStack(stack, outbound)


def example_service(base: str, cds_id: str, client_id: str, prefetch: dict[str, str]) -> ServiceConfig:
    return ServiceConfig(
        service_id=f"{base}#{cds_id}",
        cds_id=cds_id,
        hook="patient-view",
        url=f"{base}/cds-services/{cds_id}",
        discovery_url=f"{base}/cds-services",
        client_id=client_id,
        scope=SCOPES,
        prefetch=prefetch,
    )


def test_the_reference_services_prefetch_templates_are_allowed_query_forms() -> None:
    for template in [*greeting.PREFETCH.values(), *results.PREFETCH.values()]:
        assert check_template(template) is None, template


async def test_the_reference_service_accepts_the_engines_request_and_answers_with_cards(
    example: ExampleStack,
) -> None:
    stack = example.stack
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    services = [
        example_service(CDS, "patient-greeting", "cds-a", dict(greeting.PREFETCH)),
        example_service(CDS, "abnormal-results", "cds-b", dict(results.PREFETCH)),
    ]
    outcome = await stack.engine.run_hook(stack.call(user, mine), services)
    greeting_result, results_result = outcome.results
    assert greeting_result.status == "ok", greeting_result.reason
    assert results_result.status == "ok", results_result.reason
    [card] = greeting_result.cards
    assert card["summary"].startswith("Now seeing: ")
    assert card["summaryHtml"] and card["source"]["label"]
    # Everything was prefetched: the services never called the FHIR server themselves.
    assert [r for r in example.outbound.seen if r.url.host == "fhir.test"] == []


async def test_with_prefetch_withheld_the_service_reads_fhir_with_its_own_per_call_token(example: ExampleStack) -> None:
    stack = example.stack
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    # The administrator approved the patient read and the labs query only: the vitals come from the FHIR server.
    approved = {key: results.PREFETCH[key] for key in ("patient", "labs")}
    config = example_service(CDS, "abnormal-results", "cds-b", approved)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [config])
    assert outcome.results[0].status == "ok", outcome.results[0].reason
    fallback = [r for r in example.outbound.seen if r.url.host == "fhir.test"]
    assert fallback, "the service should have read the vitals itself"
    for request in fallback:
        token = request.headers["authorization"].removeprefix("Bearer ")
        claims = unverified_claims(token)
        assert claims["client_id"] == "cds-b" and claims["patient"] == mine
        assert request.url.params.get("patient") == mine
    # And that token is dead now that the exchange is over.
    await fhir_state(stack.fhir.fhir_app).revocations.poll_once()
    token = fallback[0].headers["authorization"].removeprefix("Bearer ")
    assert (await stack.fhir.get(f"Patient/{mine}", token)).status_code == 401


async def test_a_service_that_cannot_get_its_data_answers_412_and_the_engine_records_it(example: ExampleStack) -> None:
    stack = example.stack
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    # No prefetch approved and our FHIR server is not on this service's allow-list.
    config = example_service(CDS_NO_FHIR, "patient-greeting", "cds-a", {})
    outcome = await stack.engine.run_hook(stack.call(user, mine), [config])
    [result] = outcome.results
    assert result.status == "error"
    assert result.reason == "service lacks data it needs (412)"
    assert result.http_status == 412
    assert [r for r in example.outbound.seen if r.url.host == "fhir.test"] == []  # no SSRF, no retry


async def test_repeated_calls_pass_the_reference_services_jti_replay_cache(example: ExampleStack) -> None:
    """The service refuses a jti it has seen: every call passing shows every JWT is fresh."""
    stack = example.stack
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    config = example_service(CDS, "patient-greeting", "cds-a", dict(greeting.PREFETCH))
    for _ in range(3):
        outcome = await stack.engine.run_hook(stack.call(user, mine), [config])
        assert outcome.results[0].status == "ok", outcome.results[0].reason
