"""The CDS Service registry through the admin API: discovery with the EHR's JWT, approvals,
the service's client at the authorization server, and the allow-list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from sqlalchemy import select

from authserver import clients
from common.jose import import_public_jwks, verify_jwt
from ehr.models import CdsServiceRow
from ehr.principal import Principal
from ehr.state import ehr_state
from tests.integration.ehrharness import DISCOVERY, EHR, CdsDouble, EhrHarness, ehr_harness, greeting_service

ORDER_SIGN = {
    "hook": "order-sign",
    "id": "med-check",
    "description": "Checks draft orders",
    "prefetch": {
        "meds": "MedicationRequest?patient={{context.patientId}}&status=active",
        "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    },
}


@pytest.fixture
def cds() -> CdsDouble:
    return CdsDouble(services=[greeting_service(), ORDER_SIGN])


async def _rows(h: EhrHarness) -> list[CdsServiceRow]:
    async with h.ehr_app.state.runtime.sessions() as session:
        return list((await session.execute(select(CdsServiceRow).order_by(CdsServiceRow.id))).scalars())


async def _client(h: EhrHarness, client_id: str) -> Any:
    async with h.fhir.auth_app.state.runtime.sessions() as session:
        return await clients.get(session, client_id)


async def test_adding_a_discovery_url_records_every_service_and_registers_its_client(h: EhrHarness) -> None:
    response = await h.add_service(approveAllPrefetch=True)
    assert response.status_code == 201, response.text
    body = response.json()
    assert [(s["id"], s["hook"], s["url"]) for s in body["services"]] == [
        ("greeting", "patient-view", f"{DISCOVERY}/greeting"),
        ("med-check", "order-sign", f"{DISCOVERY}/med-check"),
    ]
    rows = await _rows(h)
    assert {r.id: r.enabled for r in rows} == {"greeting": True, "med-check": True}
    # Each service: read scopes for what ITS approved prefetch reads; the client: their union.
    assert {r.id: r.scope for r in rows} == {
        "greeting": "patient/Patient.rs",
        "med-check": "patient/AllergyIntolerance.rs patient/MedicationRequest.rs",
    }
    expected = "patient/AllergyIntolerance.rs patient/MedicationRequest.rs patient/Patient.rs"
    client = await _client(h, "cds-double")
    assert (client.kind, client.scope, client.active) == ("cds-service", expected, True)


async def test_discovery_carries_the_ehrs_jwt_with_the_discovery_url_as_audience(h: EhrHarness) -> None:
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    (request,) = h.cds.calls("/cds-services")
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    jwks = import_public_jwks((await h.ehr.get("/.well-known/jwks.json")).json())
    verified = verify_jwt(
        token,
        jwks,
        algorithms=["ES384", "RS384"],
        typ="JWT",
        issuer=EHR,
        audience=DISCOVERY,
        clock=h.fhir.clock,
        allowed_jku=[f"{EHR}/.well-known/jwks.json"],
    )
    assert verified.claims["exp"] - verified.claims["iat"] <= 300
    assert verified.header["jku"] == f"{EHR}/.well-known/jwks.json"


async def test_only_the_chosen_prefetch_keys_and_hooks_are_approved(h: EhrHarness) -> None:
    response = await h.add_service(hooks=["order-sign"], prefetch=["meds"], scope=["patient/MedicationRequest.rs"])
    assert response.status_code == 201, response.text
    (row,) = await _rows(h)
    assert row.id == "med-check"
    assert row.approved_prefetch == '{"meds": "MedicationRequest?patient={{context.patientId}}&status=active"}'
    assert response.json()["skipped"] == [{"id": "greeting", "hook": "patient-view", "reason": "hook not approved"}]


async def test_a_prefetch_template_outside_the_allowed_query_forms_is_refused_with_a_reason(
    tmp_path: Path, database_url: str
) -> None:
    bad = greeting_service()
    bad["prefetch"] = {
        "patient": "Patient/{{context.patientId}}",
        "everything": "Patient/{{context.patientId}}/$everything",
    }
    async with ehr_harness(tmp_path, database_url, CdsDouble(services=[bad])) as h:
        explicit = await h.add_service(prefetch=["everything"], scope=["patient/Patient.rs"])
        assert explicit.status_code == 400
        assert explicit.json()["error"] == "invalid_request"
        assert "prefetch 'everything' of greeting" in explicit.json()["message"]
        assert await _rows(h) == []
        everything = await h.add_service(approveAllPrefetch=True)
        assert everything.status_code == 201, everything.text
        (refused,) = everything.json()["refusedPrefetch"]
        assert refused["key"] == "everything" and refused["reason"]
        (row,) = await _rows(h)
        assert row.approved_prefetch == '{"patient": "Patient/{{context.patientId}}"}'


async def test_a_prefetch_key_nobody_announced_is_an_error(h: EhrHarness) -> None:
    response = await h.add_service(prefetch=["labs"], scope=["patient/Observation.rs"])
    assert response.status_code == 400
    assert response.json()["message"] == f"no service at {DISCOVERY} announces prefetch key 'labs'"


@pytest.mark.parametrize(
    ("url", "loopback"),
    [("http://cds.test/cds-services", False), ("http://cds.test/cds-services", True), ("ftp://cds.test/x", True)],
)
async def test_discovery_is_https_only_and_plain_http_only_to_loopback_by_opt_in(
    h: EhrHarness, url: str, loopback: bool
) -> None:
    response = await h.ehr.post(
        "/api/services",
        json={"discoveryUrl": url, "approveAllPrefetch": True, "allowHttpLoopback": loopback},
        headers=h.admin,
    )
    assert response.status_code == 502
    assert response.json()["error"] == "discovery_failed"
    assert h.cds.received == []


async def test_a_discovery_url_carrying_credentials_is_refused_before_any_call(h: EhrHarness) -> None:
    # user:password@ would be stored in the registry, shown by the API and placed in every JWT's aud.
    for url in ("https://admin:s3cret@cds.test/cds-services", "https://token@cds.test/cds-services"):
        response = await h.ehr.post(
            "/api/services", json={"discoveryUrl": url, "approveAllPrefetch": True}, headers=h.admin
        )
        assert response.status_code == 502
        assert response.json() == {
            "error": "discovery_failed",
            "message": "the discovery URL may not carry user information (user:password@)",
        }
    assert h.cds.received == []
    assert (await h.ehr.get("/api/services", headers=h.admin)).json()["services"] == []


async def test_discovery_is_retried_after_5xx_with_a_fresh_jwt(h: EhrHarness) -> None:
    h.cds.discovery_status = [503, 502]
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    tokens = [r.headers["authorization"] for r in h.cds.calls("/cds-services")]
    assert len(tokens) == 3 and len(set(tokens)) == 3


async def test_discovery_is_not_retried_after_a_4xx(h: EhrHarness) -> None:
    h.cds.discovery_status = [401]
    response = await h.add_service(approveAllPrefetch=True)
    assert response.status_code == 502
    assert response.json()["message"] == f"discovery at {DISCOVERY} answered HTTP 401"
    assert len(h.cds.calls("/cds-services")) == 1
    assert await _client(h, "cds-double") is None


async def test_a_service_no_longer_announced_is_disabled_when_the_url_is_added_again(h: EhrHarness) -> None:
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    h.cds.services = [greeting_service()]
    again = await h.add_service(approveAllPrefetch=True)
    assert again.status_code == 201, again.text
    assert again.json()["skipped"] == [
        {"id": "med-check", "hook": "order-sign", "reason": "no longer announced; disabled"}
    ]
    assert {r.id: r.enabled for r in await _rows(h)} == {"greeting": True, "med-check": False}


async def test_a_redirect_at_discovery_is_never_followed(h: EhrHarness) -> None:
    h.cds.discovery_status = [302]
    response = await h.add_service(approveAllPrefetch=True)
    assert response.status_code == 502
    assert response.json()["message"] == f"discovery at {DISCOVERY} answered 302: redirects are not followed"
    assert len(h.cds.received) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ((b"<html>not json</html>", "text/html"), f"discovery at {DISCOVERY} did not answer JSON"),
        ((b'{"services": [' + b'{"x": 1},' * 150_000 + b"]}", "application/json"), "exceeds 1048576 bytes"),
    ],
)
async def test_a_discovery_answer_that_is_not_json_or_too_big_is_refused(
    h: EhrHarness, body: tuple[bytes, str], message: str
) -> None:
    h.cds.discovery_body = body
    response = await h.add_service(approveAllPrefetch=True)
    assert response.status_code == 502
    assert message in response.json()["message"]
    assert await _rows(h) == []


@pytest.mark.parametrize(
    "services",
    [
        [{"hook": "patient-view", "id": "x"}],  # no description
        [{"hook": "patient-view", "id": "../admin", "description": "path traversal in the id"}],
        [{"hook": "patient-view", "id": "x", "description": "d", "prefetch": {"p": 1}}],
    ],
)
async def test_an_invalid_discovery_response_is_refused(tmp_path: Path, database_url: str, services: Any) -> None:
    async with ehr_harness(tmp_path, database_url, CdsDouble(services=services)) as h:
        response = await h.add_service(approveAllPrefetch=True, scope=["patient/Patient.rs"])
        assert response.status_code == 502
        assert response.json()["message"].startswith("invalid discovery response at services.0.")
        assert await _rows(h) == []


@pytest.mark.parametrize("scope", ["system/Patient.rs", "openid", "patient/Patient.zz"])
async def test_a_cds_service_is_never_approved_system_or_non_resource_scopes(h: EhrHarness, scope: str) -> None:
    response = await h.add_service(approveAllPrefetch=True, scope=[scope])
    assert response.status_code == 400
    assert response.json()["message"].startswith("scope")
    assert await _client(h, "cds-double") is None


async def test_patching_approvals_updates_the_row_and_the_clients_scope(h: EhrHarness) -> None:
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    response = await h.ehr.patch(
        "/api/services/med-check",
        json={"prefetch": ["allergies"], "deadlineSeconds": 2.5, "allowSystemActions": True},
        headers=h.admin,
    )
    assert response.status_code == 200, response.text
    assert response.json()["approvedPrefetch"] == {"allergies": "AllergyIntolerance?patient={{context.patientId}}"}
    assert (response.json()["deadlineSeconds"], response.json()["allowSystemActions"]) == (2.5, True)
    refused = await h.ehr.patch("/api/services/med-check", json={"prefetch": ["nope"]}, headers=h.admin)
    assert refused.status_code == 400
    rescoped = await h.ehr.patch(
        "/api/services/greeting", json={"scope": ["patient/Patient.rs", "patient/Observation.rs"]}, headers=h.admin
    )
    assert rescoped.status_code == 200
    client = await _client(h, "cds-double")
    # The client's scope is the union of its services' approvals.
    assert set(client.scope.split()) == {
        "patient/Patient.rs",
        "patient/Observation.rs",
        "patient/AllergyIntolerance.rs",
        "patient/MedicationRequest.rs",
    }


async def test_disabling_a_service_keeps_its_record(h: EhrHarness) -> None:
    assert (await h.add_service(approveAllPrefetch=True)).status_code == 201
    response = await h.ehr.post("/api/services/greeting/disable", headers=h.admin)
    assert response.status_code == 200 and response.json()["enabled"] is False
    listed = (await h.ehr.get("/api/services", headers=h.admin)).json()["services"]
    assert {s["id"]: s["enabled"] for s in listed} == {"greeting": False, "med-check": True}
    missing = await h.ehr.post("/api/services/nope/disable", headers=h.admin)
    assert missing.status_code == 404 and missing.json() == {"error": "not_found", "message": "no CDS Service 'nope'"}


async def test_the_registry_needs_the_admin_token_and_says_nothing_to_strangers(h: EhrHarness) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {h.admin_token}"}):
        response = await h.ehr.post("/api/services", content=b"{not json", headers=headers)
        assert response.status_code == 401
        assert response.content == b""
        assert response.headers["www-authenticate"] == "Bearer"
    assert h.cds.received == []


async def test_a_signed_in_user_may_not_manage_the_registry(h: EhrHarness) -> None:
    async def resolver(_request: Request) -> Principal:
        return Principal(user_ref=h.fhir.practitioner(0), is_admin=False, session_token=None)

    ehr_state(h.ehr_app).session_resolver = resolver
    response = await h.ehr.post("/api/services", json={"discoveryUrl": DISCOVERY})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert (await h.ehr.get("/api/services")).status_code == 403
    assert h.cds.received == []
