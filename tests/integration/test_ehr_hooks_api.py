"""`POST /api/hooks/{hook}` and the exchange log: who may fire a hook, what reaches the service,
what is recorded (never a credential), and that a service off the allow-list is never called."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import Request
from sqlalchemy import select

from ehr.models import CdsExchangeRow
from ehr.principal import Principal
from ehr.settings import EhrSettings
from ehr.state import ehr_state
from tests.integration.authharness import claims_of
from tests.integration.ehrharness import (
    DISCOVERY,
    CdsDouble,
    EhrHarness,
    answer_cards,
    card,
    greeting_service,
)


@pytest.fixture
def cds() -> CdsDouble:
    return CdsDouble(
        services=[greeting_service(), greeting_service("second")],
        answers={"greeting": answer_cards(card()), "second": answer_cards(card("card-2"))},
    )


@pytest.fixture
async def h(h: EhrHarness) -> EhrHarness:
    """The shared harness with both services added."""
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    return h


def _as_user(h: EhrHarness, user_ref: str) -> None:
    async def resolver(_request: Request) -> Principal:
        return Principal(user_ref=user_ref, is_admin=False, session_token=None)

    ehr_state(h.ehr_app).session_resolver = resolver


async def test_patient_view_returns_each_services_cards_and_logs_the_exchange(h: EhrHarness) -> None:
    user, patient = h.fhir.practitioner(0), h.fhir.patient_of(0)
    response = await h.fire(userId=user, patientId=patient)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(s["serviceId"], s["status"], [c["uuid"] for c in s["cards"]]) for s in body["services"]] == [
        ("greeting", "ok", ["card-1"]),
        ("second", "ok", ["card-2"]),
    ]
    (sent,) = h.cds.calls("/cds-services/greeting")
    assert sent.body["hookInstance"] == body["hookInstance"]
    assert sent.body["context"] == {"userId": user, "patientId": patient}
    assert sent.body["fhirAuthorization"]["subject"] == "cds-double"
    assert sent.body["prefetch"]["patient"]["id"] == patient
    assert claims_of(sent.headers["authorization"].split()[1])["aud"] == f"{DISCOVERY}/greeting"

    listed = (await h.ehr.get("/api/exchanges", headers=h.admin)).json()["exchanges"]
    assert {(e["hookInstance"], e["serviceId"], e["status"], e["cardCount"]) for e in listed} == {
        (body["hookInstance"], "greeting", "ok", 1),
        (body["hookInstance"], "second", "ok", 1),
    }
    detail = (await h.ehr.get(f"/api/exchanges/{body['hookInstance']}", headers=h.admin)).json()
    assert detail["userId"] == user and detail["patientId"] == patient
    greeting = next(s for s in detail["services"] if s["serviceId"] == "greeting")
    assert greeting["request"]["fhirAuthorization"]["access_token"] == "[redacted]"
    assert greeting["request"]["context"] == {"userId": user, "patientId": patient}
    assert greeting["response"] == {"cards": [card()]}
    assert set(greeting["timings"]) >= {"token_ms", "prefetch_ms", "call_ms", "revoke_ms", "total_ms"}


async def test_the_exchange_log_never_stores_the_access_token_or_the_jwt(h: EhrHarness) -> None:
    response = await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0))
    assert response.status_code == 200
    (sent,) = h.cds.calls("/cds-services/greeting")
    secrets = [sent.body["fhirAuthorization"]["access_token"], sent.headers["authorization"].split()[1]]
    async with h.ehr_app.state.runtime.sessions() as session:
        rows = (await session.execute(select(CdsExchangeRow))).scalars().all()
    stored = json.dumps([[getattr(r, c.name) for c in CdsExchangeRow.__table__.columns] for r in rows])
    assert len(rows) == 2
    for secret in secrets:
        assert secret not in stored
        assert secret.split(".")[2] not in stored  # not even the signature


async def test_a_disabled_service_is_never_called(h: EhrHarness) -> None:
    assert (await h.ehr.post("/api/services/greeting/disable", headers=h.admin)).status_code == 200
    response = await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0))
    assert [s["serviceId"] for s in response.json()["services"]] == ["second"]
    assert h.cds.calls("/cds-services/greeting") == []
    named = await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0), services=["greeting"])
    assert named.status_code == 400
    assert named.json()["message"] == "service 'greeting' is not an enabled CDS Service for hook 'patient-view'"
    assert h.cds.calls("/cds-services/greeting") == []


async def test_a_service_filter_calls_only_the_named_services(h: EhrHarness) -> None:
    response = await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0), services=["second"])
    assert [s["serviceId"] for s in response.json()["services"]] == ["second"]
    assert h.cds.calls("/cds-services/greeting") == []


async def test_a_hook_without_registered_services_calls_nobody_and_logs_nothing(h: EhrHarness) -> None:
    response = await h.fire(
        "encounter-start", userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(0), encounterId="e1"
    )
    assert response.status_code == 200 and response.json()["services"] == []
    assert (await h.ehr.get("/api/exchanges", headers=h.admin)).json()["exchanges"] == []


async def test_firing_needs_a_user_and_a_valid_context(h: EhrHarness) -> None:
    patient = h.fhir.patient_of(0)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"patientId": patient}, "userId is required with the admin token (the user the hook fires for)"),
        ({"userId": h.fhir.practitioner(0), "patientId": "Patient/1&_id=2"}, "patientId"),
        ({"userId": h.fhir.practitioner(0), "patientId": patient, "context": {"patientId": "other"}}, "context."),
        ({"userId": "Practitioner/x", "patientId": patient, "extra": 1}, "extra"),
    ]
    for body, message in cases:
        response = await h.fire(**body)
        assert response.status_code == 400, body
        assert response.json()["error"] == "invalid_request"
        assert message in response.json()["message"]
    unknown = await h.fire("no-such-hook", userId=h.fhir.practitioner(0), patientId=patient)
    assert unknown.status_code == 404
    assert h.cds.calls("/cds-services/greeting") == []


async def test_an_unauthenticated_caller_gets_a_bare_401_before_any_body_is_read(h: EhrHarness) -> None:
    for path in ("/api/hooks/patient-view", "/api/suggestions/accept", "/api/feedback"):
        response = await h.ehr.post(path, content=b"{broken", headers={"Authorization": "Bearer nope"})
        assert (response.status_code, response.content) == (401, b"")
    for path in ("/api/exchanges", "/api/exchanges/x"):
        assert (await h.ehr.get(path)).status_code == 401
    assert h.cds.received == [r for r in h.cds.received if r.path == "/cds-services"]  # discovery only


async def test_a_signed_in_user_fires_hooks_only_as_themselves_and_sees_only_their_exchanges(h: EhrHarness) -> None:
    me, other = h.fhir.practitioner(0), h.fhir.practitioner(1)
    theirs = (await h.fire(userId=other, patientId=h.fhir.patient_of(1))).json()["hookInstance"]
    _as_user(h, me)
    spoof = await h.ehr.post("/api/hooks/patient-view", json={"userId": other, "patientId": h.fhir.patient_of(1)})
    assert spoof.status_code == 403
    mine = await h.ehr.post("/api/hooks/patient-view", json={"patientId": h.fhir.patient_of(0)})
    assert mine.status_code == 200, mine.text
    listed = (await h.ehr.get("/api/exchanges")).json()["exchanges"]
    assert {e["userId"] for e in listed} == {me}
    assert (await h.ehr.get(f"/api/exchanges/{theirs}")).status_code == 404
    assert (await h.ehr.get(f"/api/exchanges/{mine.json()['hookInstance']}")).status_code == 200


async def test_a_patient_outside_the_users_reach_yields_no_cards_and_a_recorded_reason(h: EhrHarness) -> None:
    response = await h.fire(userId=h.fhir.practitioner(0), patientId=h.fhir.patient_of(1))
    assert response.status_code == 200
    for service in response.json()["services"]:
        assert service["status"] == "error" and service["cards"] == []
        assert "token exchange refused" in service["reason"]
    assert h.cds.calls("/cds-services/greeting") == []


async def test_an_admin_session_firing_for_another_user_never_lends_its_own_token(h: EhrHarness) -> None:
    me, other = h.fhir.practitioner(0), h.fhir.practitioner(1)

    async def resolver(_request: Request) -> Principal:
        return Principal(user_ref=me, is_admin=True, session_token="the-admins-own-session-token")

    ehr_state(h.ehr_app).session_resolver = resolver
    response = await h.ehr.post("/api/hooks/patient-view", json={"userId": other, "patientId": h.fhir.patient_of(1)})
    assert response.status_code == 200
    assert {s["status"] for s in response.json()["services"]} == {"ok"}  # a user assertion for `other`
    (sent, _) = (h.cds.calls("/cds-services/greeting") + h.cds.calls("/cds-services/second"))[:2]
    token = claims_of(sent.body["fhirAuthorization"]["access_token"])
    assert token["fhirUser"].endswith(other) and token["patient"] == h.fhir.patient_of(1)
    own = await h.ehr.post("/api/hooks/patient-view", json={"userId": me, "patientId": h.fhir.patient_of(0)})
    # For its own user the session token is used: this one is not a real token, so it is refused.
    assert {s["status"] for s in own.json()["services"]} == {"error"}


async def test_an_unexpected_failure_is_json_without_a_trace(h: EhrHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    async def broken() -> list[object]:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(ehr_state(h.ehr_app).parts().registry, "list_all", broken)
    transport = httpx.ASGITransport(app=h.ehr_app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="https://ehr.test") as client:
        response = await client.get("/api/services", headers=h.admin)
    assert response.status_code == 500
    assert response.json() == {
        "error": "server_error",
        "message": "the EHR failed to handle this request; see its log",
    }
    assert "secret internal detail" not in response.text and "Traceback" not in response.text


async def test_hostile_identifiers_and_numbers_get_a_json_4xx_on_every_database_never_a_500(h: EhrHarness) -> None:
    # A NUL reaches PostgreSQL as an encoding error and an out-of-range integer as an overflow
    # (SQLite) or an int32 error (PostgreSQL): both must stop at the API as a clear 4xx.
    user, patient = h.fhir.practitioner(0), h.fhir.patient_of(0)
    calls: list[tuple[str, str, object]] = [
        ("GET", "/api/exchanges/a%00b", None),
        ("GET", "/api/exchanges?serviceId=a%00", None),
        ("GET", "/api/exchanges?patientId=a%00", None),
        ("GET", "/api/exchanges?hook=a%00", None),
        ("GET", "/api/exchanges?before=99999999999999999999999999", None),
        ("PATCH", "/api/services/a%00", {}),
        ("POST", "/api/services/a%00/disable", None),
        ("POST", "/api/hooks/patient-view", {"userId": user, "patientId": patient, "services": ["greeting\u0000"]}),
        ("POST", "/api/suggestions/accept", {"hookInstance": "a", "serviceId": "a\u0000", "cardUuid": "c",
                                             "suggestionUuid": "s"}),
        ("POST", "/api/suggestions/accept", {"hookInstance": "a", "serviceId": "greeting", "cardUuid": "c\u0000",
                                             "suggestionUuid": "s"}),
        ("POST", "/api/feedback", {"hookInstance": "a", "serviceId": "greeting", "cardUuid": "c\u0000",
                                   "outcome": "overridden"}),
    ]  # fmt: skip
    for method, path, body in calls:
        response = await h.ehr.request(method, path, json=body, headers=h.admin)
        assert response.status_code in (400, 404), (path, body, response.status_code)
        assert response.json()["error"] in ("invalid_request", "not_found"), (path, body)
    assert h.cds.calls("/cds-services/greeting") == []


async def test_a_body_over_the_cap_is_refused_whether_streamed_or_declared(h: EhrHarness) -> None:
    cap = EhrSettings().max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the cap must hold while streaming.
        yield b'{"patientId": "x", "context": {"pad": "'
        for _ in range(cap // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    streamed = await h.ehr.post("/api/hooks/patient-view", content=chunks(), headers=h.admin)
    assert streamed.status_code == 413
    assert streamed.json() == {"error": "too_large", "message": f"the body is larger than {cap} bytes"}
    declared = await h.ehr.post(
        "/api/hooks/patient-view",
        content=b"{}",
        headers={**h.admin, "Content-Length": str(cap + 1)},
    )
    assert declared.status_code == 413
    assert h.cds.calls("/cds-services/greeting") == []
