"""EHR launch: the first-party EHR registers a context (POST /launch), the app brings its opaque
handle to /authorize; the handle is single use, short-lived and bound to its app and user."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from authserver.models import LaunchRow
from authserver.sessions import digest
from tests.integration.authharness import AUTH, JWT_BEARER, claims_of
from tests.integration.smartharness import (
    APP,
    APP_REDIRECT,
    OTHER_APP,
    OTHER_REDIRECT,
    Smart,
    pkce,
    query_of,
)

EHR_SCOPE = "launch openid fhirUser patient/Observation.rs"
FHIR_CONTEXT = [
    {"reference": "MedicationRequest/mr-1"},
    {"reference": "Patient/p-a2", "role": "https://example.org/roles/mother"},
    {"canonical": "http://example.org/Questionnaire/q|1.0", "type": "Questionnaire"},
]


async def _launch(smart: Smart, **body: Any) -> str:
    response = await smart.register_launch(**body)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert answer["expires_in"] == 300
    return str(answer["launch"])


async def _authorize_launch(
    smart: Smart,
    launch: str,
    *,
    username: str = "dr.a",
    client_id: str = APP,
    redirect_uri: str = APP_REDIRECT,
    scope: str = EHR_SCOPE,
) -> tuple[dict[str, str], str]:
    await smart.login(username)
    verifier, challenge = pkce()
    params = smart.authorize_params(
        challenge, client_id=client_id, redirect_uri=redirect_uri, scope=scope, launch=launch
    )
    response = await smart.authorize(params)
    assert response.status_code == 302, response.text
    assert response.headers["location"].startswith(redirect_uri + "?")
    return query_of(response.headers["location"]), verifier


async def test_an_ehr_launch_hands_its_context_to_the_app_in_the_token_response(smart: Smart) -> None:
    launch = await _launch(
        smart,
        encounter="enc-9",
        fhirContext=FHIR_CONTEXT,
        appContext='{"draftOrder":"mr-1"}',
        need_patient_banner=True,
    )
    answer, verifier = await _authorize_launch(smart, launch)
    assert smart.patients.asked == []  # no picker: the EHR chose the patient
    response = await smart.redeem(answer["code"], verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["patient"], body["encounter"]) == ("p-a1", "enc-9")
    assert body["fhirContext"] == FHIR_CONTEXT
    assert body["appContext"] == '{"draftOrder":"mr-1"}'
    assert body["need_patient_banner"] is True
    assert set(body["scope"].split()) == set(EHR_SCOPE.split())
    claims = claims_of(body["access_token"])
    assert (claims["patient"], claims["encounter"], claims["sub"]) == ("p-a1", "enc-9", "dr.a")
    assert claims_of(body["id_token"])["fhirUser"].endswith("/Practitioner/dr-a")


async def test_an_ehr_launch_defaults_to_no_patient_banner_and_omits_absent_context(smart: Smart) -> None:
    launch = await _launch(smart)
    answer, verifier = await _authorize_launch(smart, launch)
    body = (await smart.redeem(answer["code"], verifier)).json()
    assert body["need_patient_banner"] is False
    assert not {"encounter", "fhirContext", "appContext"} & set(body)


async def test_a_launch_value_is_single_use(smart: Smart) -> None:
    launch = await _launch(smart)
    await _authorize_launch(smart, launch)
    _, challenge = pkce()
    again = await smart.authorize(smart.authorize_params(challenge, scope=EHR_SCOPE, launch=launch))
    answer = query_of(again.headers["location"])
    assert answer["error"] == "invalid_request" and "code" not in answer


async def test_an_expired_launch_value_is_refused(smart: Smart) -> None:
    launch = await _launch(smart)
    smart.clock.advance(301)
    await smart.login("dr.a")
    _, challenge = pkce()
    response = await smart.authorize(smart.authorize_params(challenge, scope=EHR_SCOPE, launch=launch))
    assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_a_launch_registered_for_another_app_is_refused(smart: Smart) -> None:
    launch = await _launch(smart, client_id=APP)
    await smart.login("dr.a")
    _, challenge = pkce()
    params = smart.authorize_params(
        challenge,
        client_id=OTHER_APP,
        redirect_uri=OTHER_REDIRECT,
        scope="launch patient/Observation.rs",
        launch=launch,
    )
    response = await smart.authorize(params)
    answer = query_of(response.headers["location"])
    assert answer["error"] == "invalid_request" and "code" not in answer
    # The refusal did not consume it: the app it was registered for can still use it.
    answer, _ = await _authorize_launch(smart, launch)
    assert "code" in answer


async def test_a_launch_is_only_for_the_user_it_was_registered_for(smart: Smart) -> None:
    launch = await _launch(smart, user="dr.a")
    await smart.login("dr.b")
    _, challenge = pkce()
    response = await smart.authorize(smart.authorize_params(challenge, scope=EHR_SCOPE, launch=launch))
    assert query_of(response.headers["location"])["error"] == "access_denied"


async def test_a_launch_needs_the_launch_scope(smart: Smart) -> None:
    launch = await _launch(smart)
    await smart.login("dr.a")
    _, challenge = pkce()
    params = smart.authorize_params(challenge, scope="patient/Observation.rs", launch=launch)
    assert query_of((await smart.authorize(params)).headers["location"])["error"] == "invalid_scope"


async def test_a_garbage_launch_value_is_refused_before_login(smart: Smart) -> None:
    _, challenge = pkce()
    for launch in ("made-up", "x" * 300):
        response = await smart.authorize(smart.authorize_params(challenge, scope=EHR_SCOPE, launch=launch))
        assert query_of(response.headers["location"])["error"] == "invalid_request"


async def test_the_launch_value_is_stored_only_as_its_hash(smart: Smart) -> None:
    launch = await _launch(smart)
    async with smart.auth.app.state.runtime.sessions() as session:
        rows = list((await session.execute(select(LaunchRow))).scalars())
    assert [r.launch_hash for r in rows] == [digest(launch)]
    assert (rows[0].registered_by, rows[0].client_id, rows[0].username) == ("ehr", APP, "dr.a")


# --- who may register a launch, and what --------------------------------------------------------


async def test_only_the_first_party_ehr_may_register_a_launch(smart: Smart) -> None:
    for actor in ("ehr-2", "backend-1", "cds-a"):
        response = await smart.register_launch(**smart.auth.client_auth(actor))
        assert (response.status_code, response.json()["error"]) == (400, "unauthorized_client"), actor
    anonymous = await smart.register_launch(client_assertion_type=None, client_assertion=None)
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "invalid_client")
    assertion = smart.auth.assertion("ehr")
    first = await smart.register_launch(client_assertion_type=JWT_BEARER, client_assertion=assertion)
    assert first.status_code == 200
    replay = await smart.register_launch(client_assertion_type=JWT_BEARER, client_assertion=assertion)
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_client")
    foreign_aud = await smart.register_launch(
        client_assertion_type=JWT_BEARER, client_assertion=smart.auth.assertion("ehr", aud=f"{AUTH}/other")
    )
    assert foreign_aud.status_code == 401


async def test_a_launch_for_a_patient_outside_the_users_reach_is_refused_like_a_missing_one(smart: Smart) -> None:
    other = await smart.register_launch(patient="p-b1")
    missing = await smart.register_launch(patient="does-not-exist")
    assert other.status_code == missing.status_code == 400
    assert other.json() == missing.json()


@pytest.mark.parametrize(
    "body",
    [
        {"client_id": "backend-1"},
        {"client_id": "no-such-app"},
        {"patient": None},
        {"patient": "p-a1&x=1"},
        {"encounter": "enc/1"},
        {"user": "nobody"},
        {"user": "Practitioner/unknown"},
        {"user": None},
        {"appContext": {"draftOrder": "mr-1"}},
        {"appContext": "x" * 9000},
        {"need_patient_banner": "yes"},
        {"fhirContext": {"reference": "Observation/1"}},
        {"fhirContext": [{"reference": "Patient/p-a1"}]},
        {"fhirContext": [{"reference": "Encounter/e1", "role": "launch"}]},
        {"fhirContext": [{"reference": "https://evil.test/fhir/Observation/1"}]},
        {"fhirContext": [{"type": "Observation"}]},
        {"fhirContext": [{"reference": "Observation/1", "extra": "x"}]},
        {"fhirContext": [{"reference": f"Observation/{i}"} for i in range(21)]},
    ],
    ids=lambda b: "-".join(f"{k}={str(v)[:20]}" for k, v in b.items()),
)
async def test_a_malformed_launch_registration_is_refused(smart: Smart, body: dict[str, Any]) -> None:
    response = await smart.register_launch(**body)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request"), response.text


async def test_a_launch_body_that_is_not_a_json_object_is_refused(smart: Smart) -> None:
    for content in (b"not json", b"[1, 2]", b'"launch"'):
        response = await smart.auth.client.post(
            "/launch", content=content, headers={"content-type": "application/json"}
        )
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


async def test_the_user_may_be_named_by_username_or_by_fhir_reference(smart: Smart) -> None:
    for user in ("dr.a", "Practitioner/dr-a", "https://fhir.test/fhir/Practitioner/dr-a"):
        launch = await _launch(smart, user=user)
        answer, _ = await _authorize_launch(smart, launch)
        assert "code" in answer
