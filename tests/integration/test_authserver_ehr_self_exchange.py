"""RFC 8693 token exchange without `cds_service`: the first-party EHR gets a token for itself,
acting as the user for one patient (to apply what the user accepted), and no other client can."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from authserver.models import IssuedTokenRow
from tests.integration.authharness import EXCHANGE, FHIR, TT_ACCESS, TT_JWT, Harness, claims_of


async def _self_exchange(
    auth: Harness,
    *,
    actor: str = "ehr",
    sub: str = "Practitioner/dr-a",
    patient: str = "p-a1",
    scope: str | None = None,
) -> httpx.Response:
    form = {
        "grant_type": EXCHANGE,
        "subject_token": auth.user_assertion(sub, client_id=actor),
        "subject_token_type": TT_JWT,
        "patient": patient,
        "resource": FHIR,
        **auth.client_auth(actor),
    }
    if scope is not None:
        form["scope"] = scope
    return await auth.token(form)


async def test_the_ehr_gets_a_token_for_itself_bound_to_the_user_and_the_patient(auth: Harness) -> None:
    response = await _self_exchange(auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["scope"], body["patient"], body["expires_in"]) == ("patient/*.cruds", "p-a1", 300)
    claims = claims_of(body["access_token"])
    assert claims["client_id"] == "ehr" and claims["sub"] == "dr.a" and claims["patient"] == "p-a1"
    assert claims["aud"] == FHIR and claims["fhirUser"] == f"{FHIR}/Practitioner/dr-a"
    assert "act" not in claims  # the EHR acts for itself, not for a CDS Service
    async with auth.app.state.runtime.sessions() as session:
        row = (await session.execute(select(IssuedTokenRow).where(IssuedTokenRow.jti == claims["jti"]))).scalar_one()
    assert (row.client_id, row.actor_client_id, row.grant) == ("ehr", None, "token-exchange-self:ehr")


async def test_the_ehrs_own_token_is_narrowed_to_the_users_role(auth: Harness) -> None:
    response = await _self_exchange(auth, sub="Patient/p-a1", patient="p-a1", scope="patient/Observation.cruds")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "patient/Observation.rs"  # a patient user may not write


async def test_the_ehrs_own_token_carries_patient_scopes_only(auth: Harness) -> None:
    for scope in ("user/*.cruds", "patient/Observation.rs openid", "system/Patient.rs"):
        response = await _self_exchange(auth, scope=scope)
        assert response.status_code == 400, scope
        assert response.json()["error"] == "invalid_scope"


async def test_the_ehrs_own_token_refuses_a_patient_outside_the_users_reach_like_a_missing_one(auth: Harness) -> None:
    other = await _self_exchange(auth, patient="p-b1")
    missing = await _self_exchange(auth, patient="no-such-patient")
    assert other.status_code == missing.status_code == 400
    assert (
        other.json()
        == missing.json()
        == {
            "error": "invalid_grant",
            "error_description": "the patient is not available to this user",
        }
    )


@pytest.mark.parametrize("actor", ["ehr-2", "cds-a", "backend-1"])
async def test_no_client_but_the_first_party_ehr_may_get_a_user_token_for_itself(auth: Harness, actor: str) -> None:
    response = await _self_exchange(auth, actor=actor)
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"
    async with auth.app.state.runtime.sessions() as session:
        issued = (await session.execute(select(IssuedTokenRow))).scalars().all()
    assert issued == []


async def test_a_named_but_unknown_cds_service_is_still_refused(auth: Harness) -> None:
    response = await auth.exchange(cds_service="no-such-service")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_the_ehrs_patient_bound_token_cannot_be_exchanged_again_for_another_patient(auth: Harness) -> None:
    # If the EHR's token for one patient leaked, it must not open the user's other patients.
    own = await _self_exchange(auth, patient="p-a1")
    assert own.status_code == 200, own.text
    for cds_service in (None, "cds-a"):
        form = {
            "grant_type": EXCHANGE,
            "subject_token": own.json()["access_token"],
            "subject_token_type": TT_ACCESS,
            "patient": "p-a2",
            "resource": FHIR,
            **auth.client_auth("ehr"),
        }
        if cds_service:
            form["cds_service"] = cds_service
        response = await auth.token(form)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_grant"
