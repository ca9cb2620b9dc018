"""The token endpoint for SMART apps: authorization_code (PKCE, single use, bindings) and
refresh_token (rotation, reuse detection, narrowing only), the id_token, and revocation."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
from typing import Any

import pytest
from sqlalchemy import select

from authserver import clients
from authserver.models import AuthorizationCodeRow, RefreshTokenRow, RevocationRow
from authserver.sessions import digest
from common.errors import TokenInvalidError
from common.jose import import_public_jwks, verify_jwt
from tests.integration.authharness import AUTH, FHIR, claims_of, header_of
from tests.integration.smartharness import (
    APP,
    APP_REDIRECT,
    CONF_APP,
    CONF_REDIRECT,
    CONF_SECRET,
    OTHER_APP,
    OTHER_REDIRECT,
    Smart,
    csrf_in,
    pkce,
)


def _invalid_grant(response: Any) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    assert response.headers["cache-control"] == "no-store"


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


# --- authorization_code --------------------------------------------------------------------------


async def test_a_standalone_launch_gives_a_user_bound_token_for_the_fhir_server(smart: Smart) -> None:
    code, verifier, _ = await smart.code_for(patient="p-a2")
    response = await smart.redeem(code, verifier)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store" and response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["patient"] == "p-a2" and body["need_patient_banner"] is True
    assert body["smart_style_url"] == f"{AUTH}/smart-style.json"
    assert set(body["scope"].split()) == {
        "launch/patient",
        "patient/Observation.rs",
        "openid",
        "fhirUser",
        "offline_access",
    }
    assert {"id_token", "refresh_token"} <= set(body) and "encounter" not in body
    assert header_of(body["access_token"])["typ"] == "at+jwt"
    claims = claims_of(body["access_token"])
    assert (claims["iss"], claims["aud"], claims["sub"], claims["client_id"]) == (AUTH, FHIR, "dr.a", APP)
    assert (claims["patient"], claims["fhirUser"]) == ("p-a2", f"{FHIR}/Practitioner/dr-a")
    assert claims["scope"] == body["scope"] and claims["exp"] - claims["iat"] == 300
    assert (await smart.introspect(body["access_token"]))["active"] is True


async def test_codes_are_stored_only_as_their_hash(smart: Smart) -> None:
    code, _, _ = await smart.code_for()
    async with smart.auth.app.state.runtime.sessions() as session:
        rows = list((await session.execute(select(AuthorizationCodeRow))).scalars())
    assert [r.code_hash for r in rows] == [digest(code)]
    assert rows[0].expires_at - rows[0].created_at == 60


@pytest.mark.parametrize("verifier", ["wrong", "missing", "too-short", "the-challenge-itself"])
async def test_a_wrong_or_missing_pkce_verifier_is_refused_and_burns_the_code(smart: Smart, verifier: str) -> None:
    code, good, request = await smart.code_for()
    presented = {
        "wrong": pkce()[0],
        "missing": None,
        "too-short": good[:42],
        "the-challenge-itself": request["code_challenge"],
    }[verifier]
    _invalid_grant(await smart.redeem(code, presented))  # type: ignore[arg-type]
    _invalid_grant(await smart.redeem(code, good))  # burnt: the holder of a stolen code gets no second try


async def test_a_reused_code_is_refused_and_the_tokens_it_issued_are_revoked(smart: Smart) -> None:
    code, verifier, _ = await smart.code_for()
    first = (await smart.redeem(code, verifier)).json()
    assert (await smart.introspect(first["access_token"]))["active"] is True
    replay = await smart.redeem(code, verifier)
    _invalid_grant(replay)
    assert "already used" in replay.json()["error_description"]
    assert await smart.introspect(first["access_token"]) == {"active": False}
    _invalid_grant(await smart.refresh(first["refresh_token"]))
    async with smart.auth.app.state.runtime.sessions() as session:
        fed = {r.jti for r in (await session.execute(select(RevocationRow))).scalars()}
    assert claims_of(first["access_token"])["jti"] in fed  # the FHIR servers hear of it


async def test_two_concurrent_redemptions_of_one_code_cannot_both_win(smart: Smart) -> None:
    code, verifier, _ = await smart.code_for()
    first, second = await asyncio.gather(smart.redeem(code, verifier), smart.redeem(code, verifier))
    assert sorted([first.status_code, second.status_code]) == [200, 400]
    winner = first if first.status_code == 200 else second
    # The loser's attempt is a replay: what the winner got is revoked as well.
    assert await smart.introspect(winner.json()["access_token"]) == {"active": False}


async def test_an_expired_code_is_refused(smart: Smart) -> None:
    code, verifier, _ = await smart.code_for()
    smart.clock.advance(61)
    response = await smart.redeem(code, verifier)
    _invalid_grant(response)
    assert "expired" in response.json()["error_description"]


async def test_a_code_used_by_another_client_is_refused(smart: Smart) -> None:
    code, verifier, _ = await smart.code_for()
    response = await smart.redeem(code, verifier, client_id=OTHER_APP, redirect_uri=APP_REDIRECT)
    _invalid_grant(response)
    response = await smart.redeem(code, verifier, client_id=OTHER_APP, redirect_uri=OTHER_REDIRECT)
    _invalid_grant(response)


async def test_a_code_presented_with_another_redirect_uri_is_refused(smart: Smart) -> None:
    for redirect_uri in (OTHER_REDIRECT, APP_REDIRECT + "/", None):
        code, verifier, _ = await smart.code_for()
        _invalid_grant(await smart.redeem(code, verifier, redirect_uri=redirect_uri))  # type: ignore[arg-type]


async def test_garbage_codes_are_refused(smart: Smart) -> None:
    for code in ("", "x" * 5000, "not-a-code"):
        response = await smart.redeem(code, pkce()[0])
        assert response.status_code == 400 and response.json()["error"] in ("invalid_grant", "invalid_request")


async def test_a_confidential_app_must_authenticate_to_redeem_its_code(smart: Smart) -> None:
    params = {"client_id": CONF_APP, "redirect_uri": CONF_REDIRECT}
    code, verifier, _ = await smart.code_for(**params)
    no_secret = await smart.redeem(code, verifier, **params)
    assert (no_secret.status_code, no_secret.json()["error"]) == (401, "invalid_client")
    wrong = await smart.auth.token(
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": CONF_REDIRECT},
        headers=_basic(CONF_APP, "wrong"),
    )
    assert wrong.status_code == 401
    ok = await smart.auth.token(
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": CONF_REDIRECT},
        headers=_basic(CONF_APP, CONF_SECRET),
    )
    assert ok.status_code == 200, ok.text
    assert claims_of(ok.json()["access_token"])["client_id"] == CONF_APP


async def test_a_public_client_cannot_pass_for_a_confidential_one(smart: Smart) -> None:
    params = {"client_id": CONF_APP, "redirect_uri": CONF_REDIRECT}
    code, verifier, _ = await smart.code_for(**params)
    response = await smart.auth.token(
        {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": CONF_REDIRECT,
            "client_id": CONF_APP,
            "client_secret": CONF_SECRET,  # client_secret_post is not this client's method
        }
    )
    assert response.status_code == 401


async def test_a_backend_client_cannot_use_the_authorization_code_grant(smart: Smart) -> None:
    code, verifier, _ = await smart.code_for()
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": APP_REDIRECT}
    response = await smart.auth.token({**form, **smart.auth.client_auth("backend-1")})
    assert (response.status_code, response.json()["error"]) == (400, "unauthorized_client")


# --- refresh tokens ----------------------------------------------------------------------------


async def test_no_refresh_token_is_issued_without_offline_or_online_access(smart: Smart) -> None:
    body = await smart.tokens_for(scope="launch/patient patient/Observation.rs openid fhirUser")
    assert "refresh_token" not in body
    async with smart.auth.app.state.runtime.sessions() as session:
        assert list((await session.execute(select(RefreshTokenRow))).scalars()) == []


async def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_whole_family(smart: Smart) -> None:
    body = await smart.tokens_for()
    first_refresh = body["refresh_token"]
    rotated = await smart.refresh(first_refresh)
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    second = rotated.json()
    assert second["refresh_token"] != first_refresh and second["patient"] == "p-a1"
    assert claims_of(second["access_token"])["patient"] == "p-a1"
    # An attacker (or the app) presents the rotated-out token again: the whole family dies.
    reuse = await smart.refresh(first_refresh)
    _invalid_grant(reuse)
    _invalid_grant(await smart.refresh(second["refresh_token"]))
    for access_token in (body["access_token"], second["access_token"]):
        assert await smart.introspect(access_token) == {"active": False}


async def test_two_concurrent_refreshes_with_one_token_revoke_the_family(smart: Smart) -> None:
    body = await smart.tokens_for()
    first, second = await asyncio.gather(smart.refresh(body["refresh_token"]), smart.refresh(body["refresh_token"]))
    assert sorted([first.status_code, second.status_code]) == [200, 400]
    winner = first if first.status_code == 200 else second
    _invalid_grant(await smart.refresh(winner.json()["refresh_token"]))
    assert await smart.introspect(winner.json()["access_token"]) == {"active": False}


async def test_refresh_tokens_are_stored_only_as_their_hash(smart: Smart) -> None:
    body = await smart.tokens_for()
    async with smart.auth.app.state.runtime.sessions() as session:
        rows = list((await session.execute(select(RefreshTokenRow))).scalars())
    assert [r.token_hash for r in rows] == [digest(body["refresh_token"])]


async def test_a_refresh_may_narrow_the_scope_but_never_broaden_it(smart: Smart) -> None:
    body = await smart.tokens_for(scope="launch/patient patient/Observation.rs patient/Patient.rs offline_access")
    for broader in (
        "patient/*.rs",
        "patient/Observation.cruds",
        "user/Observation.rs",
        "patient/Condition.r",
        "openid",
    ):
        response = await smart.refresh(body["refresh_token"], scope=broader)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_scope"), broader
    malformed = await smart.refresh(body["refresh_token"], scope="patient/Observation.sr")
    assert malformed.json()["error"] == "invalid_scope"
    # The refused requests did not spend the refresh token; a narrower one is honoured.
    narrower = await smart.refresh(body["refresh_token"], scope="patient/Observation.r")
    assert narrower.status_code == 200, narrower.text
    assert narrower.json()["scope"] == "patient/Observation.r"
    assert claims_of(narrower.json()["access_token"])["scope"] == "patient/Observation.r"
    # The family keeps its scope: the next refresh without scope gets all of it again.
    again = await smart.refresh(narrower.json()["refresh_token"])
    assert set(again.json()["scope"].split()) == {
        "launch/patient",
        "patient/Observation.rs",
        "patient/Patient.rs",
        "offline_access",
    }


async def test_a_refresh_token_is_bound_to_its_client(smart: Smart) -> None:
    body = await smart.tokens_for()
    stolen = await smart.refresh(body["refresh_token"], client_id=OTHER_APP)
    _invalid_grant(stolen)
    # Presented by another client it is taken as stolen: the family is revoked.
    _invalid_grant(await smart.refresh(body["refresh_token"]))
    assert await smart.introspect(body["access_token"]) == {"active": False}


def _refresh_form(refresh_token: str) -> dict[str, str]:
    """A refresh as fhirclient.js sends it by default (refreshTokenWithClientId: false): no client_id."""
    return {"grant_type": "refresh_token", "refresh_token": refresh_token}


async def _confidential_tokens(smart: Smart) -> dict[str, Any]:
    params = {"client_id": CONF_APP, "redirect_uri": CONF_REDIRECT}
    code, verifier, _ = await smart.code_for(**params)
    response = await smart.auth.token(
        {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": CONF_REDIRECT},
        headers=_basic(CONF_APP, CONF_SECRET),
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_public_app_may_refresh_without_client_id_and_rotation_still_holds(smart: Smart) -> None:
    body = await smart.tokens_for()
    rotated = await smart.auth.token(_refresh_form(body["refresh_token"]))
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert claims_of(second["access_token"])["client_id"] == APP and second["patient"] == "p-a1"
    assert second["refresh_token"] != body["refresh_token"]
    # Reuse detection is unchanged: the rotated-out token, again without client_id, kills the family.
    _invalid_grant(await smart.auth.token(_refresh_form(body["refresh_token"])))
    _invalid_grant(await smart.refresh(second["refresh_token"]))
    assert await smart.introspect(second["access_token"]) == {"active": False}


async def test_a_confidential_apps_refresh_token_without_client_authentication_is_refused(smart: Smart) -> None:
    body = await _confidential_tokens(smart)
    for form in (
        _refresh_form(body["refresh_token"]),
        {**_refresh_form(body["refresh_token"]), "client_id": CONF_APP},
    ):
        refused = await smart.auth.token(form)
        assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client"), form
    # The refusals spent nothing: the app, authenticating, refreshes with the same token.
    ok = await smart.auth.token(_refresh_form(body["refresh_token"]), headers=_basic(CONF_APP, CONF_SECRET))
    assert ok.status_code == 200, ok.text
    assert claims_of(ok.json()["access_token"])["client_id"] == CONF_APP


async def test_a_client_id_that_is_not_the_refresh_tokens_client_is_refused(smart: Smart) -> None:
    body = await _confidential_tokens(smart)
    # A public client naming itself cannot ride a confidential client's refresh token.
    _invalid_grant(await smart.refresh(body["refresh_token"], client_id=APP))
    assert await smart.introspect(body["access_token"]) == {"active": False}


async def test_an_unknown_refresh_token_without_client_id_is_an_invalid_grant(smart: Smart) -> None:
    _invalid_grant(await smart.auth.token(_refresh_form("no-such-refresh-token")))
    _invalid_grant(await smart.auth.token(_refresh_form("x" * 300)))
    missing = await smart.auth.token({"grant_type": "refresh_token"})
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")


async def test_a_disabled_public_apps_refresh_token_without_client_id_is_refused(smart: Smart) -> None:
    body = await smart.tokens_for()
    async with smart.auth.app.state.runtime.sessions() as session, session.begin():
        assert await clients.set_active(session, APP, False)
    refused = await smart.auth.token(_refresh_form(body["refresh_token"]))
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")


async def test_an_expired_refresh_token_is_refused(smart: Smart) -> None:
    body = await smart.tokens_for()
    smart.clock.advance(smart.settings.refresh_token_lifetime_seconds + 1)
    _invalid_grant(await smart.refresh(body["refresh_token"]))


async def test_rotation_never_extends_the_familys_lifetime(smart: Smart) -> None:
    body = await smart.tokens_for()
    token = body["refresh_token"]
    for _ in range(3):
        smart.clock.advance(smart.settings.refresh_token_lifetime_seconds // 3 - 10)
        response = await smart.refresh(token)
        assert response.status_code == 200
        token = response.json()["refresh_token"]
    smart.clock.advance(31)
    _invalid_grant(await smart.refresh(token))


async def test_an_online_access_refresh_token_dies_with_the_login_session(smart: Smart) -> None:
    body = await smart.tokens_for(scope="launch/patient patient/Observation.rs online_access")
    rotated = await smart.refresh(body["refresh_token"])
    assert rotated.status_code == 200
    page = await smart.browser.get("/login")
    await smart.browser.post("/logout", data={"csrf": csrf_in(page.text)})
    _invalid_grant(await smart.refresh(rotated.json()["refresh_token"]))
    # Session expiry ends it as well.
    body = await smart.tokens_for(scope="launch/patient patient/Observation.rs online_access")
    smart.clock.advance(smart.settings.session_lifetime_seconds + 1)
    _invalid_grant(await smart.refresh(body["refresh_token"]))


async def test_an_app_can_revoke_its_refresh_token_and_with_it_the_grant(smart: Smart) -> None:
    body = await smart.tokens_for()
    other = await smart.auth.client.post("/revoke", data={"token": body["refresh_token"], "client_id": OTHER_APP})
    assert (other.status_code, other.json()["error"]) == (400, "unauthorized_client")
    response = await smart.auth.client.post("/revoke", data={"token": body["refresh_token"], "client_id": APP})
    assert response.status_code == 200
    _invalid_grant(await smart.refresh(body["refresh_token"]))
    assert await smart.introspect(body["access_token"]) == {"active": False}


# --- id_token ----------------------------------------------------------------------------------


async def test_the_id_token_is_signed_by_the_authserver_for_the_app_with_the_nonce_and_fhir_user(
    smart: Smart,
) -> None:
    body = await smart.tokens_for(scope="launch/patient patient/Observation.rs openid fhirUser profile", nonce="n-42")
    id_token = body["id_token"]
    keys = import_public_jwks((await smart.auth.client.get("/jwks")).json())
    verified = verify_jwt(
        id_token,
        keys,
        algorithms=["ES384"],
        typ="JWT",
        issuer=AUTH,
        audience=APP,
        clock=smart.clock,
        require=("exp", "iat", "jti"),
    )
    assert verified.header["typ"] == "JWT"
    claims = verified.claims
    assert (claims["iss"], claims["sub"], claims["aud"], claims["nonce"]) == (AUTH, "dr.a", APP, "n-42")
    assert claims["fhirUser"] == f"{FHIR}/Practitioner/dr-a"
    assert claims["name"] == "dr.a" and claims["auth_time"] == int(smart.clock())
    half = hashlib.sha384(body["access_token"].encode()).digest()[:24]
    assert claims["at_hash"] == base64.urlsafe_b64encode(half).rstrip(b"=").decode()
    # It is for the app, not for the FHIR server: not another audience, and never an access token.
    with pytest.raises(TokenInvalidError):
        verify_jwt(id_token, keys, algorithms=["ES384"], typ="JWT", issuer=AUTH, audience=OTHER_APP, clock=smart.clock)
    assert await smart.introspect(id_token) == {"active": False}


async def test_no_id_token_without_openid_and_no_fhir_user_claim_without_fhir_user(smart: Smart) -> None:
    without_openid = await smart.tokens_for(scope="launch/patient patient/Observation.rs fhirUser")
    assert "id_token" not in without_openid
    openid_only = await smart.tokens_for(scope="launch/patient patient/Observation.rs openid")
    claims = claims_of(openid_only["id_token"])
    assert "fhirUser" not in claims and "nonce" not in claims and "name" not in claims


async def test_a_refresh_is_refused_once_the_patient_left_the_users_reach(smart: Smart) -> None:
    body = await smart.tokens_for()
    assert body["patient"] == "p-a1"
    # The care relationship ends: the FHIR server no longer counts p-a1 in dr.a's reach.
    smart.auth.reach.reachable["Practitioner/dr-a"].discard("p-a1")
    refused = await smart.refresh(body["refresh_token"])
    _invalid_grant(refused)
    assert "no longer available" in refused.json()["error_description"]
    assert await smart.introspect(body["access_token"]) == {"active": False}  # the family is revoked


async def test_a_refresh_drops_scopes_the_app_is_no_longer_registered_for(smart: Smart) -> None:
    from authserver import clients

    body = await smart.tokens_for()
    runtime = smart.auth.app.state.runtime
    async with runtime.sessions() as session, session.begin():
        app = await clients.get(session, APP)
        assert app is not None
        kept = [s for s in app.scope.split() if not s.startswith("patient/")]
        narrowed = dataclasses.replace(app, scope=" ".join([*kept, "patient/Patient.r"]))
        await clients.register(session, narrowed)
    refreshed = await smart.refresh(body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    before = {s for s in body["scope"].split() if s.startswith("patient/")}
    after = {s for s in refreshed.json()["scope"].split() if s.startswith("patient/")}
    assert before and not before <= {"patient/Patient.r"}  # the grant had scopes now unregistered…
    assert after <= {"patient/Patient.r"}  # …and none of them survives the refresh
