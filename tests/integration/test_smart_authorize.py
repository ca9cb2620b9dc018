"""SMART App Launch 2.2 authorization endpoint: every rule mounts its attack.

The patient picker's list comes from FakePatients (tests/integration/smartharness.py), a test
double for the FHIR server's answer, as FakeReach is for can_see.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import httpx
import pytest

from authserver import clients
from authserver.patients import FhirPatients, PatientChoice
from authserver.reach import FhirReach, ReachUnavailableError
from authserver.users import User
from tests.integration.authharness import AUTH, FHIR, claims_of
from tests.integration.smartharness import (
    APP,
    APP_REDIRECT,
    CONF_APP,
    CONF_REDIRECT,
    OTHER_APP,
    Smart,
    csrf_in,
    hidden_fields,
    pkce,
    query_of,
)


def _assert_error_page(response: httpx.Response) -> None:
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def _assert_error_redirect(response: httpx.Response, error: str, *, state: str | None = "st-1") -> dict[str, str]:
    assert response.status_code in (302, 303), response.text
    location = response.headers["location"]
    assert location.startswith(APP_REDIRECT + "?")
    answer = query_of(location)
    assert answer["error"] == error, answer
    assert "code" not in answer
    assert answer.get("state") == state
    assert answer["iss"] == AUTH
    return answer


# --- client and redirect URI: an error page, never a redirect ----------------------------------


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.test/callback",
        APP_REDIRECT + "/more",
        APP_REDIRECT + "/",
        APP_REDIRECT + "?x=1",
        "http://app.test/callback",
        "https://APP.test/callback",
        "https://app.test/callback#frag",
        None,
    ],
    ids=["other-host", "longer-path", "trailing-slash", "extra-query", "http", "case", "fragment", "missing"],
)
async def test_a_redirect_uri_that_is_not_exactly_registered_gets_an_error_page_and_no_redirect(
    smart: Smart, redirect_uri: str | None
) -> None:
    await smart.login()
    _, challenge = pkce()
    params = smart.authorize_params(challenge, redirect_uri=redirect_uri)
    for post in (False, True):
        response = await smart.authorize(params, post=post)
        _assert_error_page(response)
        assert "evil.test" not in response.text


async def test_a_repeated_redirect_uri_gets_an_error_page(smart: Smart) -> None:
    _, challenge = pkce()
    params = [*smart.authorize_params(challenge).items(), ("redirect_uri", "https://evil.test/cb")]
    response = await smart.browser.get("/authorize", params=tuple(params))
    _assert_error_page(response)


async def test_an_unknown_disabled_or_non_smart_client_gets_an_error_page(smart: Smart) -> None:
    _, challenge = pkce()
    for client_id in ("no-such-app", "backend-1", "cds-a", None):
        response = await smart.authorize(smart.authorize_params(challenge, client_id=client_id))
        _assert_error_page(response)
    async with smart.auth.app.state.runtime.sessions() as session, session.begin():
        await clients.set_active(session, APP, False)
    _assert_error_page(await smart.authorize(smart.authorize_params(challenge)))


# --- after the redirect URI is validated: errors go back to the app ----------------------------


@pytest.mark.parametrize(
    ("method", "challenge"),
    [
        (None, None),
        ("plain", "VALID"),
        ("plain", None),
        (None, "VALID"),
        ("S256", None),
        ("S256", "short"),
        ("s256", "VALID"),
    ],
    ids=[
        "missing",
        "plain",
        "plain-without-challenge",
        "method-missing",
        "challenge-missing",
        "malformed",
        "lowercase",
    ],
)
async def test_pkce_is_required_and_only_with_s256(smart: Smart, method: str | None, challenge: str | None) -> None:
    await smart.login()
    _, valid = pkce()
    params = smart.authorize_params(valid, code_challenge_method=method)
    params.pop("code_challenge")
    if challenge is not None:
        params["code_challenge"] = valid if challenge == "VALID" else challenge
    _assert_error_redirect(await smart.authorize(params), "invalid_request")


@pytest.mark.parametrize("aud", [None, "", "https://other.test/fhir", FHIR + "/Patient", "https://fhir.test"], ids=str)
async def test_aud_is_required_and_must_be_this_servers_fhir_base(smart: Smart, aud: str | None) -> None:
    await smart.login()
    _, challenge = pkce()
    answer = _assert_error_redirect(
        await smart.authorize(smart.authorize_params(challenge, aud=aud)), "invalid_request"
    )
    assert "aud" in answer["error_description"]


@pytest.mark.parametrize("response_type", [None, "token", "code id_token", "id_token"], ids=str)
async def test_only_the_code_response_type_is_served(smart: Smart, response_type: str | None) -> None:
    _, challenge = pkce()
    params = smart.authorize_params(challenge, response_type=response_type)
    _assert_error_redirect(await smart.authorize(params), "unsupported_response_type")


@pytest.mark.parametrize("scope", ["patient/Observation.sr", "patient/Observation.rr", "patients/*.read", "user/.rs"])
async def test_a_malformed_scope_is_invalid_scope(smart: Smart, scope: str) -> None:
    _, challenge = pkce()
    _assert_error_redirect(await smart.authorize(smart.authorize_params(challenge, scope=scope)), "invalid_scope")


async def test_state_is_required(smart: Smart) -> None:
    _, challenge = pkce()
    params = smart.authorize_params(challenge)
    params.pop("state")
    _assert_error_redirect(await smart.authorize(params), "invalid_request", state=None)


async def test_an_error_redirect_keeps_the_query_the_redirect_uri_was_registered_with(smart: Smart) -> None:
    _, challenge = pkce()
    params = smart.authorize_params(challenge, client_id=CONF_APP, redirect_uri=CONF_REDIRECT, aud="https://x.test")
    response = await smart.authorize(params)
    assert response.headers["location"].startswith("https://conf.test/cb?")
    answer = query_of(response.headers["location"])
    assert (answer["tenant"], answer["error"], answer["state"]) == ("1", "invalid_request", "st-1")


# --- login, then back --------------------------------------------------------------------------


async def test_a_user_who_is_not_signed_in_is_sent_to_login_and_comes_back_to_the_same_request(smart: Smart) -> None:
    _, challenge = pkce()
    params = smart.authorize_params(challenge)
    response = await smart.authorize(params)
    assert response.status_code == 302
    login_url = response.headers["location"]
    assert login_url.startswith("/login?next=%2Fauthorize%3F")
    page = await smart.browser.get(login_url)
    form = hidden_fields(page.text)
    assert form["next"].startswith("/authorize?")
    signed_in = await smart.browser.post(
        "/login",
        data={
            "username": "dr.a",
            "password": "correct horse battery staple",
            "csrf": form["csrf"],
            "next": form["next"],
        },
    )
    assert signed_in.status_code == 303
    assert query_of(signed_in.headers["location"]) == params
    picker = await smart.browser.get(signed_in.headers["location"])
    assert picker.status_code == 200 and "Choose a patient" in picker.text


async def test_authorize_accepts_a_form_post_and_answers_with_303(smart: Smart) -> None:
    await smart.login("pat.a1")
    _, challenge = pkce()
    response = await smart.authorize(smart.authorize_params(challenge), post=True)
    assert response.status_code == 303
    answer = query_of(response.headers["location"])
    assert set(answer) == {"code", "state", "iss"} and answer["state"] == "st-1" and answer["iss"] == AUTH


# --- what is granted ---------------------------------------------------------------------------


async def test_the_grant_never_exceeds_the_apps_registration_or_the_users_role(smart: Smart) -> None:
    # A patient asks for user/ access, writes and system access: only what both allow is given.
    body = await smart.tokens_for(
        username="pat.a1",
        patient=None,
        scope="launch/patient patient/*.cruds user/*.rs system/*.rs openid fhirUser",
    )
    # patient/*.cruds ∩ the app's (patient/*.rs, patient/Observation.cruds) ∩ the role (patient/*.rs)
    assert set(body["scope"].split()) == {
        "launch/patient",
        "patient/*.rs",
        "patient/Observation.rs",
        "openid",
        "fhirUser",
    }
    assert body["patient"] == "p-a1"  # a Patient user is their own patient: no picker
    claims = claims_of(body["access_token"])
    assert claims["scope"] == body["scope"] and claims["patient"] == "p-a1"
    assert claims["fhirUser"] == f"{FHIR}/Patient/p-a1"
    # The other app is registered without fhirUser and offline_access: it never gets them.
    other = await smart.tokens_for(
        client_id=OTHER_APP,
        redirect_uri="https://other.test/cb",
        scope="launch/patient patient/Observation.rs openid fhirUser offline_access user/*.rs",
    )
    assert set(other["scope"].split()) == {"launch/patient", "patient/Observation.rs", "openid"}
    assert "refresh_token" not in other


async def test_a_request_granting_nothing_is_invalid_scope(smart: Smart) -> None:
    await smart.login("pat.a1")
    _, challenge = pkce()
    params = smart.authorize_params(challenge, scope="system/*.rs user/Patient.rs")
    _assert_error_redirect(await smart.authorize(params), "invalid_scope")


# --- the patient picker ------------------------------------------------------------------------


async def test_the_patient_picker_lists_only_the_patients_the_user_may_see(smart: Smart) -> None:
    await smart.login("dr.a")
    _, challenge = pkce()
    picker = await smart.authorize(smart.authorize_params(challenge))
    assert picker.status_code == 200
    assert 'value="p-a1"' in picker.text and 'value="p-a2"' in picker.text
    assert "p-b1" not in picker.text and "Carol" not in picker.text
    assert smart.patients.asked == ["dr.a"]
    chosen = await smart.pick(picker, "p-a2")
    assert chosen.status_code == 303
    code = query_of(chosen.headers["location"])["code"]
    assert code


async def test_a_tampered_picker_form_cannot_choose_a_patient_outside_the_users_reach(smart: Smart) -> None:
    await smart.login("dr.a")
    verifier, challenge = pkce()
    picker = await smart.authorize(smart.authorize_params(challenge))
    for patient in ("p-b1", "does-not-exist", "p-a1&_id=p-b1", ""):
        response = await smart.pick(picker, patient)
        answer = _assert_error_redirect(response, "access_denied")
        assert "code" not in answer
    # A scope rewritten in the form is validated and narrowed again: never beyond the app's
    # registration ∩ the user's role, whatever the form says.
    form = hidden_fields(picker.text)
    form.update({"patient": "p-a1", "scope": "launch/patient patient/*.cruds system/*.rs"})
    response = await smart.browser.post("/authorize/select", data=form)
    code = query_of(response.headers["location"])["code"]
    token = await smart.redeem(code, verifier)
    assert set(token.json()["scope"].split()) == {"launch/patient", "patient/*.rs", "patient/Observation.cruds"}


async def test_the_picker_form_needs_its_csrf_token(smart: Smart) -> None:
    await smart.login("dr.a")
    _, challenge = pkce()
    picker = await smart.authorize(smart.authorize_params(challenge))
    form = hidden_fields(picker.text)
    for csrf in (None, "", "forged", csrf_in((await smart.browser.get("/login")).text)):  # the login token
        data = {**form, "patient": "p-a1"}
        data.pop("csrf")
        if csrf is not None:
            data["csrf"] = csrf
        response = await smart.browser.post("/authorize/select", data=data)
        assert response.status_code == 403 and "location" not in response.headers


async def test_cancelling_the_picker_tells_the_app_access_denied(smart: Smart) -> None:
    await smart.login("dr.a")
    _, challenge = pkce()
    picker = await smart.authorize(smart.authorize_params(challenge))
    _assert_error_redirect(await smart.pick(picker, "p-a1", cancel="1"), "access_denied")


async def test_html_pages_run_no_script_deny_framing_and_send_no_referrer(smart: Smart) -> None:
    login = await smart.browser.get("/login")
    await smart.login("dr.a")
    _, challenge = pkce()
    picker = await smart.authorize(smart.authorize_params(challenge))
    error = await smart.authorize(smart.authorize_params(challenge, client_id="nope"))
    for page in (login, picker, error):
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "script-src" not in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        assert "<script" not in page.text.lower() and not re.search(r"\son[a-z]+\s*=", page.text, re.IGNORECASE)
        nonce = csp.split("'nonce-")[1].split("'")[0]
        assert f'<style nonce="{nonce}">' in page.text
    assert login.headers["content-security-policy"] != picker.headers["content-security-policy"]  # fresh nonce
    # The picker's form leads back to the app: its origin is the only other form target.
    assert "form-action 'self' https://app.test;" in picker.headers["content-security-policy"]


async def test_the_code_redirect_carries_state_and_iss_and_nothing_else(smart: Smart) -> None:
    await smart.login("dr.a")
    _, challenge = pkce()
    picker = await smart.authorize(smart.authorize_params(challenge, state="s p&a=ce"))
    response = await smart.pick(picker, "p-a1")
    assert response.headers["location"].startswith(APP_REDIRECT + "?")
    answer = query_of(response.headers["location"])
    assert set(answer) == {"code", "state", "iss"}
    assert answer["state"] == "s p&a=ce"
    assert len(answer["code"]) >= 43
    assert APP in hidden_fields(picker.text)["client_id"]


# --- the real patient list (FhirPatients) against a stand-in FHIR server -------------------------


async def test_the_picker_list_is_asked_of_the_fhir_server_with_a_user_scoped_token_and_fails_closed(
    smart: Smart,
) -> None:
    seen: list[httpx.Request] = []
    answers = iter(
        [
            httpx.Response(
                200,
                json={
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "Patient",
                                "id": "p-a1",
                                "name": [{"given": ["Alice"], "family": "A"}],
                            }
                        },
                        {"resource": {"resourceType": "Patient", "id": "bad id!", "name": [{"text": "Mallory"}]}},
                        {"resource": {"resourceType": "Observation", "id": "o1"}},
                    ],
                },
            ),
            httpx.Response(500),
        ]
    )

    def fhir(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    runtime = smart.auth.app.state.runtime
    async with httpx.AsyncClient(transport=httpx.MockTransport(fhir)) as http:
        reach = FhirReach(http, runtime.signing_keys, AUTH, FHIR, smart.clock)
        directory = FhirPatients(reach)
        dr_a = User("dr.a", "Practitioner/dr-a", "Dr A")
        assert await directory.patients(dr_a) == [PatientChoice("p-a1", "Alice A")]
        request = seen[0]
        assert str(request.url) == f"{FHIR}/Patient?_count=50"
        token = request.headers["authorization"].removeprefix("Bearer ")
        claims = claims_of(token)
        assert (claims["aud"], claims["scope"], claims["fhirUser"]) == (
            FHIR,
            "user/Patient.rs",
            f"{FHIR}/Practitioner/dr-a",
        )
        with pytest.raises(ReachUnavailableError):
            await directory.patients(dr_a)
        # A patient is offered themselves, without asking anyone.
        assert await directory.patients(User("pat.a1", "Patient/p-a1", "Pat")) == [PatientChoice("p-a1", "Pat")]
        assert len(seen) == 2


async def test_a_crafted_next_parameter_cannot_inject_into_the_login_pages_csp(smart: Smart) -> None:
    for redirect in ("https://x.test;script-src *", "https://x.test 'unsafe-inline'", "https://x.test\r\nX-Evil: 1"):
        next_url = "/authorize?" + urlencode({"redirect_uri": redirect, "client_id": APP})
        page = await smart.browser.get("/login", params={"next": next_url})
        csp = page.headers["content-security-policy"]
        assert "script-src" not in csp and "unsafe-inline" not in csp and "x-evil" not in page.headers
        assert "form-action 'self';" in csp
    good = "/authorize?" + urlencode({"redirect_uri": APP_REDIRECT, "client_id": APP})
    page = await smart.browser.get("/login", params={"next": good})
    assert "form-action 'self' https://app.test;" in page.headers["content-security-policy"]
