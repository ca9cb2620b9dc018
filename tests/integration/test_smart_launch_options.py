"""Launch options (authserver/launch_options.py): the EHR asks one launch for a shorter token
lifetime or a simulated error; it applies to that launch's grant only, never to the launch next
to it, and only the first-party EHR can ask."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.authharness import claims_of
from tests.integration.smartharness import Smart, pkce, query_of

SCOPE = "launch openid fhirUser patient/Observation.rs offline_access"


async def _launch(smart: Smart, options: dict[str, Any] | None = None) -> str:
    response = await smart.register_launch(launch_options=options)
    assert response.status_code == 200, response.text
    return str(response.json()["launch"])


async def _authorize(smart: Smart, launch: str) -> tuple[dict[str, str], str]:
    verifier, challenge = pkce()
    response = await smart.authorize(smart.authorize_params(challenge, scope=SCOPE, launch=launch))
    assert response.status_code == 302, response.text
    return query_of(response.headers["location"]), verifier


async def _tokens(smart: Smart, launch: str) -> dict[str, Any]:
    answer, verifier = await _authorize(smart, launch)
    response = await smart.redeem(answer["code"], verifier)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_shorter_token_lifetime_applies_to_its_launch_and_not_to_the_launch_next_to_it(smart: Smart) -> None:
    await smart.login("dr.a")
    short = await _tokens(smart, await _launch(smart, {"access_token_lifetime": 60}))
    plain = await _tokens(smart, await _launch(smart))
    default = smart.settings.access_token_lifetime_seconds
    assert default > 60
    assert short["expires_in"] == 60
    assert claims_of(short["access_token"])["exp"] - claims_of(short["access_token"])["iat"] == 60
    assert plain["expires_in"] == default
    assert claims_of(plain["access_token"])["exp"] - claims_of(plain["access_token"])["iat"] == default
    # The option stays with the grant: the refreshed token is as short-lived; it never reaches the app.
    refreshed = await smart.refresh(short["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["expires_in"] == 60
    assert "launch_options" not in short and "access_token_lifetime" not in short


@pytest.mark.parametrize("error", ["access_denied", "invalid_scope"])
async def test_a_simulated_authorization_error_redirects_back_with_that_error_and_only_for_its_launch(
    smart: Smart, error: str
) -> None:
    await smart.login("dr.a")
    failing = await _launch(smart, {"simulate_error": error})
    plain = await _launch(smart)
    answer, _ = await _authorize(smart, failing)
    assert answer["error"] == error and "code" not in answer
    assert answer["state"] == "st-1"
    other, _ = await _authorize(smart, plain)
    assert "code" in other and "error" not in other


async def test_a_simulated_revocation_revokes_the_launchs_tokens_as_issued_and_no_other(smart: Smart) -> None:
    await smart.login("dr.a")
    revoked = await _tokens(smart, await _launch(smart, {"simulate_error": "token_revoked"}))
    plain = await _tokens(smart, await _launch(smart))
    # Not expired, yet inactive: the FHIR server learns it from the revocation feed it polls.
    assert claims_of(revoked["access_token"])["exp"] > smart.clock()
    assert (await smart.introspect(revoked["access_token"]))["active"] is False
    assert (await smart.introspect(plain["access_token"]))["active"] is True
    feed = (await smart.auth.client.get("/revocations")).json()["revocations"]
    assert [r["jti"] for r in feed] == [claims_of(revoked["access_token"])["jti"]]
    refreshed = (await smart.refresh(revoked["refresh_token"])).json()
    assert (await smart.introspect(refreshed["access_token"]))["active"] is False


async def test_a_simulated_refresh_refusal_answers_invalid_grant_and_only_for_its_launch(smart: Smart) -> None:
    await smart.login("dr.a")
    refused = await _tokens(smart, await _launch(smart, {"simulate_error": "refresh_refused"}))
    plain = await _tokens(smart, await _launch(smart))
    assert (await smart.introspect(refused["access_token"]))["active"] is True
    response = await smart.refresh(refused["refresh_token"])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert (await smart.refresh(plain["refresh_token"])).status_code == 200


@pytest.mark.parametrize(
    "options",
    [
        {"access_token_lifetime": 59},
        {"access_token_lifetime": 10**6},
        {"access_token_lifetime": "60"},
        {"access_token_lifetime": True},
        {"simulate_error": "server_error"},
        {"extend_scope": True},
        ["access_denied"],
    ],
)
async def test_launch_options_out_of_bounds_are_refused_with_invalid_request(smart: Smart, options: Any) -> None:
    response = await smart.register_launch(launch_options=options)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_a_token_lifetime_longer_than_the_default_cannot_be_asked_for(smart: Smart) -> None:
    longer = smart.settings.access_token_lifetime_seconds + 1
    response = await smart.register_launch(launch_options={"access_token_lifetime": longer})
    assert response.status_code == 400


async def test_only_the_first_party_ehr_can_register_a_launch_with_options(smart: Smart) -> None:
    response = await smart.auth.client.post(
        "/launch",
        json={
            "client_id": "app-public",
            "patient": "p-a1",
            "user": "Practitioner/dr-a",
            "launch_options": {"simulate_error": "token_revoked"},
            **smart.auth.client_auth("backend-1"),
        },
    )
    assert response.status_code in (400, 401)
    assert response.json()["error"] in ("unauthorized_client", "invalid_client")
