"""The CDS token flow across both services: the EHR exchanges a user assertion for a per-call
token bound to one CDS Service, user and patient; the authorization server asks the real FHIR
server who the user may see; the FHIR server lets that token see exactly that patient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from authserver import clients
from authserver.clients import Client
from authserver.reach import FhirReach
from common.jose import new_jti, sign_jwt
from tests.integration.authharness import EXCHANGE, JWT_BEARER, TT_JWT, claims_of, jwks_of, new_key
from tests.integration.fhirharness import AUTH, FHIR, FHIR_ORIGIN, FhirHarness, fhir_harness


@pytest.fixture
async def flow(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[FhirHarness, Any]]:
    async with fhir_harness(tmp_path, database_url) as fhir:
        ehr_key = new_key()
        runtime = fhir.auth_app.state.runtime
        async with runtime.sessions() as session, session.begin():
            await clients.register(
                session, Client("ehr", "ehr", "EHR", "private_key_jwt", "", True, True, jwks=jwks_of(ehr_key))
            )
            await clients.register(
                session,
                Client(
                    "cds-x", "cds-service", "CDS X", "none", "patient/Observation.rs patient/Patient.rs", False, True
                ),
            )
        # The authorization server reaches the in-process FHIR server for its reach question.
        to_fhir = httpx.AsyncClient(transport=httpx.ASGITransport(app=fhir.fhir_app), base_url=FHIR_ORIGIN)
        fhir.auth_app.state.auth.reach = FhirReach(to_fhir, runtime.signing_keys, AUTH, FHIR, fhir.clock)
        yield fhir, ehr_key
        await to_fhir.aclose()


async def _exchange(fhir: FhirHarness, ehr_key: Any, user: str, patient: str) -> httpx.Response:
    now = int(fhir.clock())
    assertion = sign_jwt(
        {"iss": "ehr", "sub": "ehr", "aud": f"{AUTH}/token", "iat": now, "exp": now + 60, "jti": new_jti()},
        ehr_key,
        typ="JWT",
    )
    user_assertion = sign_jwt(
        {"iss": "ehr", "sub": user, "aud": f"{AUTH}/token", "iat": now, "exp": now + 30, "jti": new_jti()},
        ehr_key,
        typ="user+jwt",
    )
    transport = httpx.ASGITransport(app=fhir.auth_app)
    async with httpx.AsyncClient(transport=transport, base_url=AUTH) as auth:
        return await auth.post(
            "/token",
            data={
                "grant_type": EXCHANGE,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion,
                "subject_token": user_assertion,
                "subject_token_type": TT_JWT,
                "cds_service": "cds-x",
                "patient": patient,
                "resource": FHIR,
                "scope": "patient/Observation.rs patient/Patient.rs",
            },
        )


async def test_a_per_call_token_sees_the_users_patient_and_nothing_else(flow: tuple[FhirHarness, Any]) -> None:
    fhir, ehr_key = flow
    user, mine, theirs = fhir.practitioner(0), fhir.patient_of(0), fhir.patient_of(1)
    response = await _exchange(fhir, ehr_key, user, mine)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert claims_of(token)["client_id"] == "cds-x" and claims_of(token)["patient"] == mine
    assert (await fhir.get(f"Patient/{mine}", token)).status_code == 200
    assert (await fhir.get("Observation", token, patient=mine)).json()["total"] > 0
    assert (await fhir.get(f"Patient/{theirs}", token)).status_code == 404
    assert (await fhir.get("Observation", token, patient=theirs)).json()["total"] == 0
    assert (await fhir.get("Condition", token, patient=mine)).status_code == 403


async def test_the_fhir_server_decides_who_the_user_may_see_including_care_teams(flow: tuple[FhirHarness, Any]) -> None:
    fhir, ehr_key = flow
    member = fhir.data.practitioners[1]
    via_careteam = fhir.data.careteam_member_patients[member.id][0]
    outsider = next(p for p in fhir.data.practitioners[2].patient_ids if p != via_careteam)
    assert (await _exchange(fhir, ehr_key, f"Practitioner/{member.id}", via_careteam)).status_code == 200
    refused = await _exchange(fhir, ehr_key, f"Practitioner/{member.id}", outsider)
    missing = await _exchange(fhir, ehr_key, f"Practitioner/{member.id}", "no-such-patient")
    assert refused.status_code == missing.status_code == 400
    assert (
        refused.json()
        == missing.json()
        == {"error": "invalid_grant", "error_description": "the patient is not available to this user"}
    )
