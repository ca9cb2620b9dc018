"""Tokens: backend client_credentials, token exchange for CDS Services, introspection, revocation."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from authserver.models import IssuedTokenRow
from tests.integration.authharness import (
    AUTH,
    FHIR,
    TOKEN_URL,
    TT_ACCESS,
    Harness,
    claims_of,
    header_of,
    jwks_of,
)

# --- client_credentials ------------------------------------------------------------------------


async def test_a_backend_token_is_an_rfc9068_jwt_for_the_fhir_server(auth: Harness) -> None:
    response = await auth.token(
        {"grant_type": "client_credentials", "scope": "system/Patient.rs", **auth.client_auth("backend-1")}
    )
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}  # no refresh_token
    assert (body["token_type"], body["scope"], body["expires_in"]) == ("Bearer", "system/Patient.rs", 300)
    assert header_of(body["access_token"])["typ"] == "at+jwt"
    claims = claims_of(body["access_token"])
    assert (claims["iss"], claims["aud"], claims["sub"], claims["client_id"]) == (AUTH, FHIR, "backend-1", "backend-1")
    assert claims["exp"] - claims["iat"] == 300


async def test_a_backend_client_gets_no_more_than_it_was_pre_authorised(auth: Harness) -> None:
    response = await auth.token(
        {"grant_type": "client_credentials", "scope": "system/*.cruds", **auth.client_auth("backend-2")}
    )
    assert response.json()["scope"] == "system/Patient.rs"
    outside = await auth.token(
        {"grant_type": "client_credentials", "scope": "system/Observation.rs", **auth.client_auth("backend-2")}
    )
    assert (outside.status_code, outside.json()["error"]) == (400, "invalid_scope")


async def test_a_backend_client_cannot_ask_for_patient_or_user_scopes(auth: Harness) -> None:
    response = await auth.token(
        {"grant_type": "client_credentials", "scope": "patient/Patient.rs", **auth.client_auth("backend-1")}
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")


async def test_a_token_for_another_resource_server_is_refused(auth: Harness) -> None:
    form = {"grant_type": "client_credentials", "resource": "https://other.test/fhir", **auth.client_auth("backend-1")}
    response = await auth.token(form)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_target")


async def test_unsupported_grants_are_refused_before_client_authentication(auth: Harness) -> None:
    for grant in ("password", "implicit", ""):
        response = await auth.token({"grant_type": grant})
        assert (response.status_code, response.json()["error"]) == (400, "unsupported_grant_type")


# --- token exchange ----------------------------------------------------------------------------


async def test_token_exchange_binds_the_token_to_the_service_user_and_patient(auth: Harness) -> None:
    response = await auth.exchange()
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["issued_token_type"] == TT_ACCESS and body["token_type"] == "Bearer"
    assert body["patient"] == "p-a1" and body["expires_in"] <= 300
    claims = claims_of(body["access_token"])
    assert header_of(body["access_token"])["typ"] == "at+jwt"
    assert claims["client_id"] == "cds-a"
    assert claims["sub"] == "dr.a"
    assert claims["aud"] == FHIR
    assert claims["patient"] == "p-a1"
    assert claims["fhirUser"] == f"{FHIR}/Practitioner/dr-a"
    assert claims["act"] == {"sub": "ehr"}
    assert set(claims["scope"].split()) == {"patient/Observation.rs", "patient/Patient.r"}
    assert auth.reach.asked == [("dr.a", "p-a1")]


async def test_token_exchange_narrows_a_broader_request_to_what_the_service_was_approved(auth: Harness) -> None:
    response = await auth.exchange(scope="patient/*.cruds")
    assert set(response.json()["scope"].split()) == {
        "patient/Observation.rs",
        "patient/Patient.rs",
        "patient/Condition.rs",
    }


async def test_token_exchange_refuses_scopes_the_service_was_never_approved(auth: Harness) -> None:
    response = await auth.exchange(scope="patient/MedicationRequest.cud")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")


async def test_token_exchange_refuses_a_patient_outside_the_users_panel_like_a_missing_one(auth: Harness) -> None:
    other = await auth.exchange(patient="p-b1")
    missing = await auth.exchange(patient="does-not-exist")
    assert other.status_code == missing.status_code == 400
    assert (
        other.json()
        == missing.json()
        == {"error": "invalid_grant", "error_description": "the patient is not available to this user"}
    )
    async with auth.app.state.runtime.sessions() as session:
        issued = (await session.execute(select(IssuedTokenRow))).scalars().all()
    assert issued == []


async def test_a_patient_user_may_only_get_tokens_for_themselves(auth: Harness) -> None:
    assert (await auth.exchange(sub="Patient/p-a1", patient="p-a1", scope="patient/Observation.rs")).status_code == 200
    other = await auth.exchange(sub="Patient/p-a1", patient="p-a2", scope="patient/Observation.rs")
    assert other.json()["error"] == "invalid_grant"
    # A patient's ceiling is read-only, whatever the service was approved for.
    writes = await auth.exchange(sub="Patient/p-a1", patient="p-a1", scope="patient/Observation.cud")
    assert writes.json()["error"] == "invalid_scope"


async def test_token_exchange_refuses_another_resource(auth: Harness) -> None:
    response = await auth.exchange(resource="https://other.test/fhir")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_target")


async def test_token_exchange_refuses_a_client_that_is_not_first_party(auth: Harness) -> None:
    response = await auth.exchange(actor="ehr-2")
    assert (response.status_code, response.json()["error"]) == (400, "unauthorized_client")


async def test_token_exchange_refuses_a_cds_service_asking_for_itself(auth: Harness) -> None:
    response = await auth.exchange(actor="cds-a")
    assert response.json()["error"] == "unauthorized_client"


async def test_token_exchange_refuses_an_unregistered_or_non_cds_target(auth: Harness) -> None:
    for target in ("nobody", "backend-1", "ehr"):
        response = await auth.exchange(cds_service=target)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


async def test_a_user_assertion_cannot_be_replayed(auth: Harness) -> None:
    assertion = auth.user_assertion("Practitioner/dr-a")
    first = await auth.exchange(subject_token=assertion)
    second = await auth.exchange(subject_token=assertion)
    assert first.status_code == 200
    assert (second.status_code, second.json()["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda h: h.user_assertion("Practitioner/dr-a", typ="JWT"), id="a-cds-hooks-jwt-typ"),
        pytest.param(lambda h: h.user_assertion("Practitioner/dr-a", typ="at+jwt"), id="an-access-token-typ"),
        pytest.param(lambda h: h.user_assertion("Practitioner/dr-a", client_id="ehr-2"), id="signed-by-another-client"),
        pytest.param(lambda h: h.user_assertion("Practitioner/dr-a", aud="https://ehr.test/cds"), id="wrong-aud"),
        pytest.param(
            lambda h: h.user_assertion("Practitioner/dr-a", aud=[TOKEN_URL, "https://other.example/token"]),
            id="aud-naming-another-server-too",
        ),
        pytest.param(lambda h: h.user_assertion("Practitioner/dr-a", exp=int(h.clock()) + 600), id="lifetime-too-long"),
        pytest.param(lambda h: h.user_assertion("Practitioner/nobody"), id="unknown-user"),
    ],
)
async def test_a_bad_user_assertion_is_invalid_grant(auth: Harness, make: object) -> None:
    response = await auth.exchange(subject_token=make(auth))  # type: ignore[operator]
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


async def test_another_clients_access_token_is_no_subject_for_the_ehr(auth: Harness) -> None:
    backend_token = await auth.backend_token()
    response = await auth.exchange(subject_token=backend_token, subject_token_type=TT_ACCESS)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


# --- introspection and revocation --------------------------------------------------------------


async def _introspect(auth: Harness, token: str, caller: str = "ehr") -> dict[str, object]:
    response = await auth.client.post("/introspect", data={"token": token, **auth.client_auth(caller)})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    return response.json()  # type: ignore[no-any-return]


async def test_introspection_of_a_live_token_describes_it(auth: Harness) -> None:
    token = (await auth.exchange()).json()["access_token"]
    body = await _introspect(auth, token)
    assert body["active"] is True
    assert (body["client_id"], body["sub"], body["patient"], body["fhirUser"]) == (
        "cds-a",
        "dr.a",
        "p-a1",
        f"{FHIR}/Practitioner/dr-a",
    )


async def test_introspection_of_garbage_expired_and_revoked_tokens_says_only_inactive(auth: Harness) -> None:
    assert await _introspect(auth, "garbage") == {"active": False}
    revoked = (await auth.exchange()).json()["access_token"]
    await auth.client.post("/revoke", data={"token": revoked, **auth.client_auth("ehr")})
    assert await _introspect(auth, revoked) == {"active": False}
    expiring = (await auth.exchange()).json()["access_token"]
    auth.clock.advance(301)
    assert await _introspect(auth, expiring) == {"active": False}


async def test_introspection_requires_an_authenticated_caller(auth: Harness) -> None:
    token = (await auth.exchange()).json()["access_token"]
    response = await auth.client.post("/introspect", data={"token": token})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


async def test_a_client_cannot_revoke_another_clients_token(auth: Harness) -> None:
    token = await auth.backend_token()
    refused = await auth.client.post("/revoke", data={"token": token, **auth.client_auth("backend-2")})
    assert (refused.status_code, refused.json()["error"]) == (400, "unauthorized_client")
    assert (await _introspect(auth, token))["active"] is True


async def test_the_ehr_revokes_what_it_obtained_for_a_cds_service_and_the_feed_shows_it(auth: Harness) -> None:
    token = (await auth.exchange()).json()["access_token"]
    before = (await auth.client.get("/revocations")).json()
    revoked = await auth.client.post("/revoke", data={"token": token, **auth.client_auth("ehr")})
    assert revoked.status_code == 200 and revoked.json() == {}
    feed = (await auth.client.get("/revocations", params={"after": before["last"]})).json()
    assert [r["jti"] for r in feed["revocations"]] == [claims_of(token)["jti"]]
    assert feed["last"] > before["last"]
    # Revoking again, or revoking something unknown, is a quiet 200 (RFC 7009 §2.2).
    assert (await auth.client.post("/revoke", data={"token": token, **auth.client_auth("ehr")})).status_code == 200
    assert (await auth.client.post("/revoke", data={"token": "unknown", **auth.client_auth("ehr")})).status_code == 200


# --- admin API ---------------------------------------------------------------------------------


async def test_the_admin_api_needs_the_admin_token(auth: Harness) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {auth.admin_token}"}):
        response = await auth.client.get("/admin/clients", headers=headers)
        assert (response.status_code, response.headers["www-authenticate"]) == (401, "Bearer")


async def test_the_admin_api_registers_a_cds_service_and_refuses_a_private_key(auth: Harness) -> None:
    headers = {"Authorization": f"Bearer {auth.admin_token}"}
    jwks = jwks_of(auth.keys["cds-a"])
    body = {"client_id": "cds-new", "kind": "cds-service", "scope": "patient/Observation.rs", "jwks": jwks}
    created = await auth.client.put("/admin/clients/cds-new", json=body, headers=headers)
    assert created.status_code == 200 and created.json()["scope"] == "patient/Observation.rs"
    private = dict(jwks["keys"][0], d=auth.keys["cds-a"].key.as_dict(private=True)["d"])
    bad = await auth.client.put(
        "/admin/clients/cds-bad", json={**body, "client_id": "cds-bad", "jwks": {"keys": [private]}}, headers=headers
    )
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_request")
    listed = (await auth.client.get("/admin/clients", headers=headers)).json()
    assert "cds-new" in {c["client_id"] for c in listed} and "cds-bad" not in {c["client_id"] for c in listed}
    assert all("secret_hash" not in c for c in listed)


async def test_housekeeping_forgets_only_what_can_no_longer_matter(auth: Harness) -> None:
    from authserver.maintenance import purge
    from authserver.models import RevocationRow, UsedJtiRow

    live = (await auth.exchange()).json()["access_token"]
    dead = (await auth.exchange()).json()["access_token"]
    await auth.client.post("/revoke", data={"token": dead, **auth.client_auth("ehr")})
    runtime = auth.app.state.runtime
    await purge(runtime.sessions, int(auth.clock()))
    async with runtime.sessions() as session:
        assert len((await session.execute(select(IssuedTokenRow))).scalars().all()) == 2
        assert len((await session.execute(select(RevocationRow))).scalars().all()) == 1
    # Past every expiry (and the one-hour grace of token records), everything goes.
    await purge(runtime.sessions, int(auth.clock()) + 301 + 3600)
    async with runtime.sessions() as session:
        assert (await session.execute(select(IssuedTokenRow))).scalars().all() == []
        assert (await session.execute(select(RevocationRow))).scalars().all() == []
        assert (await session.execute(select(UsedJtiRow))).scalars().all() == []
    assert live


async def test_the_admin_api_refuses_a_stranger_before_reading_the_body(auth: Harness) -> None:
    response = await auth.client.put("/admin/clients/x", json={"not": "a client"})
    assert (response.status_code, response.content) == (401, b"")


async def test_a_first_party_ehr_must_use_private_key_jwt_to_exchange(auth: Harness) -> None:
    from authserver import clients as registry
    from authserver.clients import Client

    async with auth.app.state.runtime.sessions() as session, session.begin():
        await registry.register(
            session, Client("ehr-secret", "ehr", "EHR", "client_secret_basic", "", True, True), "s3cret-value"
        )
    import base64

    basic = base64.b64encode(b"ehr-secret:s3cret-value").decode()
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": auth.user_assertion("Practitioner/dr-a"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "cds_service": "cds-a",
        "patient": "p-a1",
        "resource": FHIR,
    }
    response = await auth.token(form, headers={"Authorization": f"Basic {basic}"})
    assert (response.status_code, response.json()["error"]) == (400, "unauthorized_client")
