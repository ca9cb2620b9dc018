"""The example SMART app's own defences, in-process, with the FHIR and authorization servers as an
httpx.MockTransport: only its configured FHIR server may launch it; the authorization request
carries PKCE S256, state, nonce, launch and aud; the answer must come back to the browser that
started it, from the issuer it was sent to (RFC 9207), with an id_token for this very launch.
(The real thing, launched from the EHR, is in tests/browser/test_ehr_ui.py.)"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from common.jose import new_jti, sign_jwt
from common.keys import SigningKey, generate_key, public_jwk
from examples.smart_app.app import STATE_COOKIE, create_app
from examples.smart_app.settings import SmartAppSettings
from tests.integration.apps import serving

APP = "https://app.test"
FHIR = "https://fhir.test/fhir"
AUTH = "https://auth.test"
PATIENT = "pat-1"


@dataclass
class Servers:
    """The FHIR server and the authorization server, as far as the app talks to them."""

    key: SigningKey = field(default_factory=lambda: SigningKey("k1", "ES384", generate_key("ES384")))
    calls: list[str] = field(default_factory=list)
    nonce: str | None = None
    token_forms: list[dict[str, str]] = field(default_factory=list)
    id_token_claims: Callable[[dict[str, Any]], dict[str, Any]] = lambda claims: claims

    def id_token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": AUTH,
            "sub": "dr.test",
            "aud": "smart-example",
            "iat": now,
            "exp": now + 300,
            "jti": new_jti(),
            "nonce": self.nonce,
            "fhirUser": f"{FHIR}/Practitioner/p-1",
        }
        return sign_jwt(self.id_token_claims(claims), self.key, typ="JWT")

    def handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url).split("?")[0]
        self.calls.append(url)
        if url == f"{FHIR}/.well-known/smart-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": AUTH,
                    "authorization_endpoint": f"{AUTH}/authorize",
                    "token_endpoint": f"{AUTH}/token",
                    "jwks_uri": f"{AUTH}/jwks",
                    "code_challenge_methods_supported": ["S256"],
                },
            )
        if url == f"{AUTH}/jwks":
            return httpx.Response(200, json={"keys": [public_jwk(self.key.key, self.key.kid, self.key.alg)]})
        if url == f"{AUTH}/token":
            self.token_forms.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
            return httpx.Response(
                200,
                json={
                    "access_token": "at-1",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "launch openid fhirUser patient/Patient.rs",
                    "patient": PATIENT,
                    "appContext": '{"issue":"duplicate-therapy"}',
                    "id_token": self.id_token(),
                },
            )
        if url == f"{FHIR}/Patient/{PATIENT}" and request.headers.get("authorization") == "Bearer at-1":
            return httpx.Response(
                200, json={"resourceType": "Patient", "id": PATIENT, "name": [{"given": ["Ann"], "family": "Lee"}]}
            )
        return httpx.Response(404)


@pytest.fixture
def servers() -> Servers:
    return Servers()


@pytest.fixture
async def app(tmp_path: Path, servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    settings = SmartAppSettings(data_dir=tmp_path, public_url=APP, fhir_base_url=FHIR)
    async with serving(create_app(settings, transport=httpx.MockTransport(servers.handle)), APP) as client:
        yield client


async def launch(app: httpx.AsyncClient, servers: Servers) -> dict[str, str]:
    started = await app.get("/launch", params={"iss": FHIR, "launch": "opaque-launch"})
    assert started.status_code == 302
    query = {k: v[0] for k, v in parse_qs(urlsplit(started.headers["location"]).query).items()}
    servers.nonce = query["nonce"]
    return query


async def test_a_launch_from_another_fhir_server_is_refused_without_contacting_it(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    answer = await app.get("/launch", params={"iss": "https://evil.test/fhir", "launch": "x"})
    assert answer.status_code == 400 and "location" not in answer.headers
    assert servers.calls == []
    assert (await app.get("/launch", params={"iss": FHIR})).status_code == 400  # no launch value


async def test_the_authorization_request_carries_pkce_s256_state_nonce_launch_and_aud(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    started = await app.get("/launch", params={"iss": FHIR, "launch": "opaque-launch"})
    target = urlsplit(started.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{AUTH}/authorize"
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert query["response_type"] == "code" and query["client_id"] == "smart-example"
    assert query["redirect_uri"] == f"{APP}/callback"
    assert query["launch"] == "opaque-launch" and query["aud"] == FHIR
    assert "launch" in query["scope"].split() and "openid" in query["scope"].split()
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["state"] and query["nonce"]
    cookie = started.headers["set-cookie"].lower()
    assert cookie.startswith(STATE_COOKIE.lower() + "=") and "secure" in cookie and "httponly" in cookie


async def test_the_app_shows_the_patient_and_the_app_context_and_proves_pkce(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    query = await launch(app, servers)
    page = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert page.status_code == 200
    assert "Ann Lee" in page.text and PATIENT in page.text
    assert "{&#34;issue&#34;:&#34;duplicate-therapy&#34;}" in page.text  # appContext, escaped
    assert "Practitioner/p-1" in page.text
    (form,) = servers.token_forms
    assert form["grant_type"] == "authorization_code" and form["client_id"] == "smart-example"
    verifier_hash = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=")
    assert verifier_hash.decode() == query["code_challenge"]
    assert "script" not in page.headers["content-security-policy"]  # the page runs no script at all


async def test_an_answer_this_browser_did_not_start_is_refused(app: httpx.AsyncClient, servers: Servers) -> None:
    query = await launch(app, servers)
    app.cookies.clear()  # another browser: no state cookie
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and servers.token_forms == []
    app.cookies.set(STATE_COOKIE, "forged")
    answer = await app.get("/callback", params={"code": "c-1", "state": "forged", "iss": AUTH})
    assert answer.status_code == 400 and servers.token_forms == []


async def test_an_answer_from_another_issuer_is_refused_before_the_code_is_redeemed(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    query = await launch(app, servers)
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": "https://evil.test"})
    assert answer.status_code == 400 and "another authorization server" in answer.text
    assert servers.token_forms == []


async def test_a_state_is_good_for_one_answer_only(app: httpx.AsyncClient, servers: Servers) -> None:
    query = await launch(app, servers)
    assert (await app.get("/callback", params={"code": "c", "state": query["state"], "iss": AUTH})).status_code == 200
    app.cookies.set(STATE_COOKIE, query["state"])
    replay = await app.get("/callback", params={"code": "c", "state": query["state"], "iss": AUTH})
    assert replay.status_code == 400 and len(servers.token_forms) == 1


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c: {**c, "nonce": "another-launch"}, id="nonce"),
        pytest.param(lambda c: {**c, "aud": "another-app"}, id="aud"),
        pytest.param(lambda c: {**c, "iss": "https://evil.test"}, id="iss"),
        pytest.param(lambda c: {**c, "exp": int(time.time()) - 3600}, id="exp"),
    ],
)
async def test_an_id_token_that_does_not_answer_this_launch_is_refused(
    app: httpx.AsyncClient, servers: Servers, tamper: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    servers.id_token_claims = tamper
    query = await launch(app, servers)
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and "Ann Lee" not in answer.text
    assert f"{FHIR}/Patient/{PATIENT}" not in servers.calls  # nothing read with the token
