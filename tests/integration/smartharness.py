"""An authorization server in-process for SMART App Launch attack tests: registered SMART apps,
users with real argon2 passwords, a browser (an httpx client keeping cookies) and PKCE helpers.

It builds on authharness (the EHR, CDS Service and backend clients, FakeReach). The patient
picker's list comes from FakePatients, a test double like FakeReach: the real FhirPatients asks
the FHIR server, which is not running here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from sqlalchemy import update

from authserver import clients
from authserver.app import create_app
from authserver.clients import Client
from authserver.models import UserRow
from authserver.passwords import hash_password
from authserver.patients import PatientChoice
from authserver.settings import AuthSettings
from authserver.users import User
from common.clock import FrozenClock
from tests.integration.apps import serving
from tests.integration.authharness import AUTH, FHIR, FakeReach, Harness, _register, new_key

PASSWORD = "correct horse battery staple"
APP = "app-public"
APP_REDIRECT = "https://app.test/callback"
CONF_APP = "app-confidential"
CONF_SECRET = "s3cret-of-the-confidential-app"
CONF_REDIRECT = "https://conf.test/cb?tenant=1"
OTHER_APP = "app-other"
OTHER_REDIRECT = "https://other.test/cb"
APP_SCOPE = (
    "launch launch/patient openid fhirUser profile offline_access online_access "
    "patient/*.rs user/*.rs patient/Observation.cruds"
)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def csrf_in(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "no CSRF token in the page"
    return found.group(1)


def hidden_fields(page: str) -> dict[str, str]:
    found = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return {name: html.unescape(value) for name, value in found}


@dataclass
class FakePatients:
    """Test double for the patient picker's source (the real one asks the FHIR server)."""

    lists: dict[str, list[PatientChoice]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def patients(self, user: User) -> list[PatientChoice]:
        self.asked.append(user.username)
        if user.role == "Patient":
            return [PatientChoice(user.resource_id, user.display)]
        return list(self.lists.get(user.fhir_user, []))


@dataclass
class Smart:
    auth: Harness
    settings: AuthSettings
    patients: FakePatients

    @property
    def browser(self) -> httpx.AsyncClient:
        return self.auth.client

    @property
    def clock(self) -> FrozenClock:
        return self.auth.clock

    def authorize_params(
        self,
        challenge: str,
        *,
        client_id: str | None = APP,
        redirect_uri: str | None = APP_REDIRECT,
        scope: str | None = "launch/patient patient/Observation.rs openid fhirUser offline_access",
        state: str | None = "st-1",
        **extra: str | None,
    ) -> dict[str, str]:
        """The authorization request's parameters; a parameter given as None is left out."""
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "aud": FHIR,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        params.update(extra)
        return {k: v for k, v in params.items() if v is not None}

    async def login(
        self, username: str = "dr.a", password: str = PASSWORD, *, browser: httpx.AsyncClient | None = None
    ) -> httpx.Response:
        browser = browser or self.browser
        page = await browser.get("/login")
        if 'action="/logout"' in page.text:  # someone is signed in: sign out first
            await browser.post("/logout", data={"csrf": csrf_in(page.text)})
            page = await browser.get("/login")
        return await browser.post(
            "/login", data={"username": username, "password": password, "csrf": csrf_in(page.text), "next": ""}
        )

    async def authorize(self, params: dict[str, str], *, post: bool = False) -> httpx.Response:
        if post:
            return await self.browser.post("/authorize", data=params)
        return await self.browser.get("/authorize", params=params)

    async def pick(self, picker: httpx.Response, patient: str, **extra: str) -> httpx.Response:
        form = hidden_fields(picker.text)
        form.update({"patient": patient, **extra})
        return await self.browser.post("/authorize/select", data=form)

    async def code_for(
        self,
        *,
        username: str = "dr.a",
        patient: str | None = "p-a1",
        **params: Any,
    ) -> tuple[str, str, dict[str, str]]:
        """Sign in, authorize (picking `patient` when asked) and return (code, verifier, params)."""
        verifier, challenge = pkce()
        request = self.authorize_params(challenge, **params)
        if (await self.login(username)).status_code != 303:
            raise AssertionError("login failed")
        response = await self.authorize(request)
        if response.status_code == 200 and patient is not None:  # the picker
            response = await self.pick(response, patient)
        assert response.status_code in (302, 303), response.text
        answer = query_of(response.headers["location"])
        assert "code" in answer, answer
        return answer["code"], verifier, request

    async def redeem(
        self, code: str, verifier: str, *, client_id: str = APP, redirect_uri: str = APP_REDIRECT, **extra: str
    ) -> httpx.Response:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            **extra,
        }
        return await self.auth.token({k: v for k, v in form.items() if v is not None})

    async def tokens_for(self, **params: Any) -> dict[str, Any]:
        code, verifier, request = await self.code_for(**params)
        response = await self.redeem(
            code,
            verifier,
            client_id=request["client_id"],
            redirect_uri=request["redirect_uri"],
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def refresh(self, refresh_token: str, *, client_id: str = APP, scope: str | None = None) -> httpx.Response:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
        if scope is not None:
            form["scope"] = scope
        return await self.auth.token(form)

    async def introspect(self, token: str) -> dict[str, Any]:
        response = await self.auth.client.post(
            "/introspect", data={"token": token, **self.auth.client_auth("backend-1")}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def register_launch(self, **body: Any) -> httpx.Response:
        payload: dict[str, Any] = {
            "client_id": APP,
            "patient": "p-a1",
            "user": "Practitioner/dr-a",
            **self.auth.client_auth("ehr"),
        }
        payload.update(body)
        return await self.auth.client.post("/launch", json={k: v for k, v in payload.items() if v is not None})


@functools.cache
def _password_hash() -> str:
    return hash_password(PASSWORD)  # argon2 is slow on purpose: hash once per test session


async def register_apps(app: Any) -> None:
    runtime = app.state.runtime
    apps = [
        (Client(APP, "smart-app", "Public app", "none", APP_SCOPE, False, True, redirect_uris=(APP_REDIRECT,)), None),
        (
            Client(
                CONF_APP,
                "smart-app",
                "Confidential app",
                "client_secret_basic",
                APP_SCOPE,
                False,
                True,
                redirect_uris=(CONF_REDIRECT,),
            ),
            CONF_SECRET,
        ),
        (
            Client(
                OTHER_APP,
                "smart-app",
                "Another app",
                "none",
                "launch launch/patient openid patient/*.rs",
                False,
                True,
                redirect_uris=(OTHER_REDIRECT,),
            ),
            None,
        ),
    ]
    password_hash = _password_hash()
    async with runtime.sessions() as session, session.begin():
        for client, secret in apps:
            await clients.register(session, client, secret)
        await session.execute(update(UserRow).values(password_hash=password_hash))


@asynccontextmanager
async def running_smart(
    tmp_path: Path, database_url: str, clock: FrozenClock | None = None, **overrides: Any
) -> AsyncIterator[Smart]:
    """Like authharness.running_authserver, with settings overrides and the SMART apps."""
    clock = clock or FrozenClock(1_800_000_000)
    keys = {name: new_key() for name in ("ehr", "ehr-2", "cds-a", "backend-1", "backend-2")}
    keys["backend-1-rsa"] = new_key("RS384")
    settings = AuthSettings(
        data_dir=tmp_path, database_url=database_url, public_url=AUTH, fhir_base_url=FHIR, **overrides
    )
    app = create_app(settings, clock=clock)
    async with serving(app, AUTH) as client:
        await _register(app, keys)
        await register_apps(app)
        reach = FakeReach({"Practitioner/dr-a": {"p-a1", "p-a2"}, "Practitioner/dr-b": {"p-b1"}})
        app.state.auth.reach = reach
        patients = FakePatients(
            {
                "Practitioner/dr-a": [PatientChoice("p-a1", "Alice A", "1970-01-01"), PatientChoice("p-a2", "Bob A")],
                "Practitioner/dr-b": [PatientChoice("p-b1", "Carol B")],
            }
        )
        app.state.auth.patients = patients
        yield Smart(Harness(client, app, clock, keys, reach, settings.admin_secret()), settings, patients)


def authorize_url(params: dict[str, str]) -> str:
    return f"{AUTH}/authorize?{urlencode(params)}"
