"""The chart's Apps menu and launch options, against the real authorization server and FHIR
server (ehrharness): the menu lists active SMART apps that have a launch URL, read at each page
view; a launch registers the context and the options at the authorization server, the EHR records
them, and the options change that launch's grant only (the launch next to it is untouched)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from authserver import clients
from authserver.clients import Client
from authserver.models import LaunchRow
from authserver.sessions import digest
from ehr.models import SmartLaunchRow
from ehr.ui.session import SESSION_COOKIE, CookieBox, Session
from fhirserver.state import fhir_state
from mockehr.demo import USERS_FILE
from tests.integration.authharness import claims_of
from tests.integration.ehrharness import EHR, EhrHarness, Router
from tests.integration.fhirharness import AUTH, FHIR

CSRF = "csrf-of-this-session"
LAUNCH = "https://app.test/launch"
REDIRECT = "https://app.test/callback"
SCOPE = "launch openid fhirUser patient/*.rs offline_access"
POST = {"X-CSRF-Token": CSRF, "Origin": EHR}


@pytest.fixture
async def h(h: EhrHarness) -> AsyncIterator[EhrHarness]:
    """The shared h with SMART apps and a CDS Service registered, the UI's HTTP routed in-process."""
    runtime = h.fhir.auth_app.state.runtime
    async with runtime.sessions() as session, session.begin():
        for client in (
            Client(
                "app-a",
                "smart-app",
                "Zeta app",
                "none",
                SCOPE,
                False,
                True,
                redirect_uris=(REDIRECT,),
                launch_url=LAUNCH,
            ),
            Client(
                "app-b",
                "smart-app",
                "Alpha app",
                "none",
                SCOPE,
                False,
                True,
                redirect_uris=("https://b.test/cb",),
                launch_url="https://b.test/launch",
            ),
            Client(
                "app-nolaunch",
                "smart-app",
                "No launch URL",
                "none",
                SCOPE,
                False,
                True,
                redirect_uris=("https://c.test/cb",),
            ),
            Client(
                "cds-x",
                "cds-service",
                "A CDS Service",
                "none",
                "patient/*.rs",
                False,
                True,
                launch_url="https://x.test/l",
            ),
        ):
            await clients.register(session, client, None)
    # The UI reads FHIR and calls the authserver with the runtime's client: route it in-process.
    routed = httpx.AsyncClient(transport=Router({"auth.test": h.fhir.auth_app, "fhir.test": h.fhir.fhir_app}))
    original = h.ehr_app.state.runtime.http
    h.ehr_app.state.runtime.http = routed
    try:
        yield h
    finally:
        h.ehr_app.state.runtime.http = original
        await routed.aclose()


async def _sign_in(h: EhrHarness, practitioner: int = 0) -> str:
    """A UI session of a demo practitioner, with a real user token of theirs."""
    user = h.fhir.practitioner(practitioner)
    token = await h.fhir.token("user/*.cruds", user=user, client_id="ehr", record=True)
    now = int(h.fhir.clock())
    session = Session(user, "Dr. Demo", token, now + 280, None, CSRF, now, now, sid=f"sid-{practitioner}")
    h.ehr.cookies.set(
        SESSION_COOKIE, CookieBox(h.ehr_app.state.runtime.settings.kek()).seal(SESSION_COOKIE, asdict(session))
    )
    return user


def _menu(page: str) -> list[str]:
    found = re.search(r'<ul id="apps-list">(.*?)</ul>', page, re.S)
    return re.findall(r'data-client="([^"]+)"', found.group(1)) if found else []


async def _launch(h: EhrHarness, **body: Any) -> httpx.Response:
    return await h.ehr.post("/ui/launch", json={"url": LAUNCH, **body}, headers=POST)


def _launch_value(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    url = response.json()["url"]
    assert url.startswith(LAUNCH + "?")
    query = parse_qs(urlsplit(url).query)
    assert query["iss"] == [FHIR]
    return str(query["launch"][0])


async def test_the_apps_menu_lists_active_smart_apps_with_a_launch_url_and_a_disabled_app_disappears_at_once(
    h: EhrHarness,
) -> None:
    await _sign_in(h)
    patient = h.fhir.patient_of(0)
    page = await h.ehr.get(f"/patients/{patient}")
    assert page.status_code == 200
    assert _menu(page.text) == ["app-b", "app-a"]  # by name; no app without a launch URL, no other kind
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=h.fhir.auth_app), base_url=AUTH) as auth:
        disabled = await auth.post("/admin/clients/app-a/disable", headers=h.admin)
    assert disabled.status_code == 204
    assert _menu((await h.ehr.get(f"/patients/{patient}")).text) == ["app-b"]
    refused = await _launch(h, patientId=patient)
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"


async def test_a_launch_sends_the_context_and_options_to_the_authserver_and_the_ehr_records_them(
    h: EhrHarness,
) -> None:
    user = await _sign_in(h)
    patient = h.fhir.patient_of(0)
    bundle = (await h.fhir_read("MedicationRequest", patient=patient)).json()
    medication = f"MedicationRequest/{bundle['entry'][0]['resource']['id']}"
    options = {"accessTokenLifetime": 60, "simulateError": "token_revoked"}
    with_options = _launch_value(await _launch(h, patientId=patient, fhirContext=[medication], options=options))
    plain = _launch_value(await _launch(h, patientId=patient))
    async with h.fhir.auth_app.state.runtime.sessions() as session:
        row = await session.get(LaunchRow, digest(with_options))
        other = await session.get(LaunchRow, digest(plain))
    assert row is not None and other is not None
    assert json.loads(row.launch_options) == {"access_token_lifetime": 60, "simulate_error": "token_revoked"}
    assert json.loads(row.fhir_context) == [{"reference": medication}]
    assert (row.patient, row.client_id) == (patient, "app-a")
    assert other.launch_options is None
    async with h.ehr_app.state.runtime.sessions() as session:
        recorded = list((await session.execute(select(SmartLaunchRow).order_by(SmartLaunchRow.id))).scalars())
    assert [(r.user_ref, r.patient_id, r.client_id, r.outcome) for r in recorded] == [
        (user, patient, "app-a", "registered"),
        (user, patient, "app-a", "registered"),
    ]
    assert json.loads(recorded[0].options) == {"access_token_lifetime": 60, "simulate_error": "token_revoked"}
    assert json.loads(recorded[1].options) == {}
    page = await h.ehr.get("/launches")
    assert page.status_code == 200
    assert "token lifetime 60 s" in page.text and "<code>token_revoked</code>" in page.text
    assert medication in page.text


async def test_another_users_launches_are_not_shown_on_the_launches_page(h: EhrHarness) -> None:
    await _sign_in(h, 0)
    _launch_value(await _launch(h, patientId=h.fhir.patient_of(0), options={"simulateError": "access_denied"}))
    await _sign_in(h, 1)
    page = await h.ehr.get("/launches")
    assert "access_denied" not in page.text and "No launches yet." in page.text


@pytest.mark.parametrize(
    "body",
    [
        {"options": {"simulateError": "server_error"}},
        {"options": {"accessTokenLifetime": 5}},
        {"options": {"scope": "system/*.*"}},
        {"fhirContext": ["Patient/other"]},
        {"fhirContext": "MedicationRequest/1"},
        {"fhirContext": ["http://evil.test/MedicationRequest/1"]},
    ],
)
async def test_launch_options_and_fhir_context_out_of_bounds_are_refused(h: EhrHarness, body: dict[str, Any]) -> None:
    await _sign_in(h)
    response = await _launch(h, patientId=h.fhir.patient_of(0), **body)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


async def test_fhir_context_must_be_resources_the_user_can_read(h: EhrHarness) -> None:
    await _sign_in(h, 0)
    others = (await h.fhir_read("MedicationRequest", patient=h.fhir.patient_of(1))).json()
    foreign = f"MedicationRequest/{others['entry'][0]['resource']['id']}"
    response = await _launch(h, patientId=h.fhir.patient_of(0), fhirContext=[foreign])
    assert response.status_code == 400 and foreign in response.json()["message"]


# --- the options' effect, through the app's own authorization and token requests ---------------


async def _app_tokens(h: EhrHarness, launch: str, practitioner: int = 0) -> dict[str, Any]:
    """What the app gets: the demo user signs in at the authserver, the app redeems the code."""
    username = h.fhir.data.practitioners[practitioner].username
    password = json.loads((Path(h.ehr_app.state.runtime.settings.data_dir) / USERS_FILE).read_text())[username][
        "password"
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=h.fhir.auth_app), base_url=AUTH) as browser:
        login = await browser.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert csrf
        signed = await browser.post(
            "/login", data={"username": username, "password": password, "csrf": csrf.group(1), "next": ""}
        )
        assert signed.status_code == 303, signed.text
        verifier = "v" * 64
        import base64
        import hashlib

        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        answer = await browser.get(
            "/authorize",
            params={
                "response_type": "code",
                "client_id": "app-a",
                "redirect_uri": REDIRECT,
                "scope": SCOPE,
                "state": "s",
                "aud": FHIR,
                "launch": launch,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        query = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}
        if "code" not in query:
            return query
        token = await browser.post(
            "/token",
            data={
                "grant_type": "authorization_code",
                "code": query["code"],
                "code_verifier": verifier,
                "redirect_uri": REDIRECT,
                "client_id": "app-a",
            },
        )
        assert token.status_code == 200, token.text
        body: dict[str, Any] = token.json()
        return body


async def test_a_token_revoked_launch_is_refused_by_the_fhir_server_before_exp_and_the_launch_next_to_it_reads(
    h: EhrHarness,
) -> None:
    await _sign_in(h)
    patient = h.fhir.patient_of(0)
    revoked = await _app_tokens(
        h, _launch_value(await _launch(h, patientId=patient, options={"simulateError": "token_revoked"}))
    )
    plain = await _app_tokens(h, _launch_value(await _launch(h, patientId=patient)))
    await fhir_state(h.fhir.fhir_app).revocations.poll_once()  # what the FHIR server does every ≤ 0.5 s
    assert claims_of(revoked["access_token"])["exp"] > h.fhir.clock()
    refused = await h.fhir.get(f"Patient/{patient}", revoked["access_token"])
    assert refused.status_code == 401
    read = await h.fhir.get(f"Patient/{patient}", plain["access_token"])
    assert read.status_code == 200 and read.json()["id"] == patient


async def test_a_simulated_denial_reaches_the_app_as_access_denied_and_the_launch_next_to_it_gets_a_code(
    h: EhrHarness,
) -> None:
    await _sign_in(h)
    patient = h.fhir.patient_of(0)
    denied = await _app_tokens(
        h, _launch_value(await _launch(h, patientId=patient, options={"simulateError": "access_denied"}))
    )
    assert denied["error"] == "access_denied"
    assert "access_token" in await _app_tokens(h, _launch_value(await _launch(h, patientId=patient)))


# --- registering an app in the admin pages ------------------------------------------------------


async def _sign_in_admin(h: EhrHarness, *, admin: bool = True) -> None:
    await _sign_in(h)
    now = int(h.fhir.clock())
    user = h.fhir.practitioner(0)
    token = await h.fhir.token("user/*.cruds", user=user, client_id="ehr", record=True)
    session = Session(user, "Dr. Admin", token, now + 280, None, CSRF, now, now, is_admin=admin, sid="sid-admin")
    box = CookieBox(h.ehr_app.state.runtime.settings.kek())
    h.ehr.cookies.set(SESSION_COOKIE, box.seal(SESSION_COOKIE, asdict(session)))


def _form(**changes: str) -> dict[str, str]:
    form = {
        "csrf": CSRF,
        "client_id": "my-app",
        "name": "My app",
        "redirect_uris": "https://my.test/callback\nhttps://my.test/cb2",
        "launch_url": "https://my.test/launch",
        "client_type": "public",
        "jwks_uri": "",
        "jwks": "",
        "scope": "launch openid fhirUser patient/*.rs",
    }
    form.update(changes)
    return form


async def _registered(h: EhrHarness, client_id: str = "my-app") -> Client | None:
    async with h.fhir.auth_app.state.runtime.sessions() as session:
        return await clients.get(session, client_id)


async def test_an_admin_registers_a_public_app_in_the_form_and_it_is_in_the_apps_menu_at_once(h: EhrHarness) -> None:
    await _sign_in_admin(h)
    form = await h.ehr.get("/admin/clients/new")
    assert form.status_code == 200 and 'id="register-form"' in form.text
    answer = await h.ehr.post("/admin/clients/new", data=_form(), headers={"Origin": EHR})
    assert answer.status_code == 200, answer.text
    assert 'id="client-secret"' not in answer.text
    saved = await _registered(h)
    assert saved is not None
    assert (saved.kind, saved.auth_method, saved.redirect_uris, saved.launch_url) == (
        "smart-app",
        "none",
        ("https://my.test/callback", "https://my.test/cb2"),
        "https://my.test/launch",
    )
    assert "my-app" in _menu((await h.ehr.get(f"/patients/{h.fhir.patient_of(0)}")).text)


async def test_a_confidential_apps_secret_is_shown_once_and_only_its_hash_is_kept(h: EhrHarness) -> None:
    await _sign_in_admin(h)
    answer = await h.ehr.post("/admin/clients/new", data=_form(client_type="confidential-symmetric"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    found = re.search(r'<code id="client-secret">([^<]+)</code>', answer.text)
    assert found and len(found.group(1)) >= 40
    secret = found.group(1)
    saved = await _registered(h)
    assert saved is not None and saved.auth_method == "client_secret_basic"
    assert saved.secret_hash and secret not in saved.secret_hash
    assert secret not in (await h.ehr.get("/admin/clients")).text
    # The secret authenticates the app at the token endpoint (a bad one does not).
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=h.fhir.auth_app), base_url=AUTH) as auth:
        form = {"grant_type": "refresh_token", "refresh_token": "x" * 43}
        good = await auth.post("/token", data=form, auth=("my-app", secret))
        bad = await auth.post("/token", data=form, auth=("my-app", secret + "x"))
    assert good.json()["error"] == "invalid_grant"  # authenticated; the refresh token is made up
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"


async def test_an_asymmetric_app_registers_with_a_pasted_jwks_and_a_private_key_is_refused(h: EhrHarness) -> None:
    from common.keys import generate_key, public_jwk

    await _sign_in_admin(h)
    key = generate_key("ES384")
    public = {"keys": [public_jwk(key, "k1", "ES384")]}
    ok = await h.ehr.post(
        "/admin/clients/new", data=_form(client_type="confidential-asymmetric", jwks=json.dumps(public))
    )
    assert ok.status_code == 200, ok.text
    saved = await _registered(h)
    assert saved is not None and saved.auth_method == "private_key_jwt" and saved.jwks == public
    private = {"keys": [{**public["keys"][0], "d": "c2VjcmV0"}]}
    refused = await h.ehr.post(
        "/admin/clients/new",
        data=_form(client_id="my-app-2", client_type="confidential-asymmetric", jwks=json.dumps(private)),
    )
    assert refused.status_code == 400 and 'id="register-error"' in refused.text
    assert await _registered(h, "my-app-2") is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"redirect_uris": "http://my.test/callback"}, "https"),
        ({"scope": "launch patient/*.zz"}, ""),
        ({"client_type": "confidential-asymmetric"}, "JWKS"),
        ({"client_id": "bad id/../x"}, "client_id"),
        ({"client_type": "magic"}, "client type"),
    ],
)
async def test_a_registration_the_admin_api_refuses_shows_its_reason_in_the_form_and_registers_nothing(
    h: EhrHarness, changes: dict[str, str], message: str
) -> None:
    await _sign_in_admin(h)
    answer = await h.ehr.post("/admin/clients/new", data=_form(**changes))
    assert answer.status_code == 400, answer.text
    error = re.search(r'id="register-error" role="alert">([^<]*)<', answer.text)
    assert error and message.lower() in error.group(1).lower()
    assert await _registered(h, changes.get("client_id", "my-app")) is None


async def test_a_registration_never_overwrites_an_existing_client(h: EhrHarness) -> None:
    await _sign_in_admin(h)
    answer = await h.ehr.post("/admin/clients/new", data=_form(client_id="app-a", redirect_uris="https://evil.test/cb"))
    assert answer.status_code == 400 and "already registered" in answer.text
    saved = await _registered(h, "app-a")
    assert saved is not None and saved.redirect_uris == (REDIRECT,)


async def test_a_registration_without_the_csrf_token_or_from_another_origin_is_refused(h: EhrHarness) -> None:
    await _sign_in_admin(h)
    assert (await h.ehr.post("/admin/clients/new", data=_form(csrf=""))).status_code == 403
    cross = await h.ehr.post("/admin/clients/new", data=_form(), headers={"Origin": "https://evil.test"})
    assert cross.status_code == 403
    assert await _registered(h) is None


async def test_a_user_not_elevated_to_admin_cannot_register_an_app(h: EhrHarness) -> None:
    await _sign_in_admin(h, admin=False)
    assert (await h.ehr.get("/admin/clients/new")).headers["location"] == "/admin"
    answer = await h.ehr.post("/admin/clients/new", data=_form())
    assert answer.status_code == 303 and answer.headers["location"] == "/admin"
    assert await _registered(h) is None
