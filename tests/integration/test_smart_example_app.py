"""The example SMART app's own defences, in-process, with the FHIR and authorization servers behind a
requests adapter (the app is built on Python `fhirclient`, which talks through requests): only its
configured FHIR server may launch it; the authorization request carries PKCE S256, state, nonce,
launch and aud; the answer must come back to the browser that started it, with the state sent,
from the issuer it was sent to (RFC 9207), with an id_token for this very launch.
(The real thing, launched from the EHR, is in tests/browser/test_ehr_ui.py.)"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from common.jose import new_jti, sign_jwt
from common.keys import SigningKey, generate_key, public_jwk
from examples.smart_app.app import LAUNCH_COOKIE, create_app
from examples.smart_app.settings import SmartAppSettings
from examples.smart_app.transport import smart_session
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
    sent_with: list[dict[str, Any]] = field(default_factory=list)  # requests' send() options per call
    threads: set[int] = field(default_factory=set)
    nonce: str | None = None
    token_forms: list[dict[str, str]] = field(default_factory=list)
    id_token_claims: Callable[[dict[str, Any]], dict[str, Any]] = lambda claims: claims
    token_extra: dict[str, Any] = field(default_factory=dict)
    smart_configuration: httpx.Response | None = None
    token_error: httpx.Response | None = None
    medications_status: int = 200
    medication_queries: list[dict[str, str]] = field(default_factory=list)

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
            return self.smart_configuration or httpx.Response(
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
            if self.token_error is not None:
                return self.token_error
            return httpx.Response(
                200,
                json={
                    "access_token": "access-token-1",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "launch openid fhirUser patient/Patient.rs",
                    "patient": PATIENT,
                    "appContext": '{"issue":"duplicate-therapy"}',
                    "fhirContext": [{"reference": "MedicationRequest/draft-1"}],
                    "id_token": self.id_token(),
                    **self.token_extra,
                },
            )
        if url == f"{FHIR}/Patient/{PATIENT}" and request.headers.get("authorization") == "Bearer access-token-1":
            return httpx.Response(
                200,
                json={
                    "resourceType": "Patient",
                    "id": PATIENT,
                    "name": [{"given": ["Ann"], "family": "Lee"}],
                    "birthDate": "1961-04-02",
                },
            )
        if url == f"{FHIR}/MedicationRequest" and request.headers.get("authorization") == "Bearer access-token-1":
            self.medication_queries.append(dict(request.url.params))
            if self.medications_status != 200:
                return httpx.Response(self.medications_status, json={"resourceType": "OperationOutcome", "issue": []})
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": MEDICATIONS})
        return httpx.Response(404)


MEDICATIONS = [
    {
        "resource": {
            "resourceType": "MedicationRequest",
            "id": "mr-1",
            "status": "active",
            "authoredOn": "2026-01-02",
            "medicationCodeableConcept": {"coding": [{"display": "Warfarin 5 MG Oral Tablet"}]},
            "dosageInstruction": [{"text": "<b>once daily</b>"}],
        }
    },
    {
        "resource": {
            "resourceType": "MedicationRequest",
            "id": "mr-2",
            "status": "stopped",
            "medicationCodeableConcept": {"text": "Aspirin 81 MG"},
        }
    },
]


class ServersAdapter(BaseAdapter):
    """A requests transport adapter answering from `Servers` (what requests would send on the wire)."""

    def __init__(self, servers: Servers) -> None:
        super().__init__()
        self.servers = servers

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        self.servers.sent_with.append({"verify": verify, "timeout": timeout, "proxies": proxies})
        self.servers.threads.add(threading.get_ident())
        body = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        assert isinstance(body, bytes), "the app sends no streamed bodies"
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        sent = httpx.Request(str(request.method), str(request.url), headers=headers, content=body)
        answer = self.servers.handle(sent)
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = CaseInsensitiveDict(answer.headers)
        response._content = answer.content
        response.url = str(request.url)
        response.request = request
        response.encoding = "utf-8"
        return response

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def servers() -> Servers:
    return Servers()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path: Path) -> SmartAppSettings:
    return SmartAppSettings(data_dir=tmp_path, public_url=APP, fhir_base_url=FHIR, log_level="debug")


@pytest.fixture
async def app(settings: SmartAppSettings, servers: Servers, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(settings, clock=clock, adapter=ServersAdapter(servers)), APP) as client:
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
    assert answer.status_code == 400 and "location" not in answer.headers and "set-cookie" not in answer.headers
    assert servers.calls == []
    assert (await app.get("/launch", params={"iss": FHIR})).status_code == 400  # no launch value
    assert servers.calls == []


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
    scopes = query["scope"].split()
    assert scopes.count("launch") == 1 and "openid" in scopes and "fhirUser" in scopes
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["state"] and query["nonce"]
    cookie = started.headers["set-cookie"]
    assert cookie.startswith(LAUNCH_COOKIE + "=")
    assert {"secure", "httponly", "samesite=lax", "path=/"} <= {p.strip().lower() for p in cookie.split(";")}
    # The cookie is an opaque key: neither the state nor anything of fhirclient's goes to the browser.
    value = app.cookies[LAUNCH_COOKIE]
    assert value != query["state"] and query["state"] not in cookie
    assert servers.calls == [f"{FHIR}/.well-known/smart-configuration"]  # nothing else before the user consents


async def test_the_app_shows_the_patient_and_the_app_context_and_proves_pkce(
    app: httpx.AsyncClient, servers: Servers, settings: SmartAppSettings
) -> None:
    query = await launch(app, servers)
    page = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert page.status_code == 200, page.text
    assert "Ann Lee" in page.text and PATIENT in page.text and "1961-04-02" in page.text
    assert "{&#34;issue&#34;:&#34;duplicate-therapy&#34;}" in page.text  # appContext, escaped
    assert "MedicationRequest/draft-1" in page.text  # fhirContext
    assert "Practitioner/p-1" in page.text and "patient/Patient.rs" in page.text
    assert "access-token-1" not in page.text and "eyJ" not in page.text  # neither the access token nor the id_token
    (form,) = servers.token_forms
    assert form["grant_type"] == "authorization_code" and form["client_id"] == "smart-example"
    assert form["code"] == "c-1" and form["redirect_uri"] == f"{APP}/callback" and "client_secret" not in form
    verifier_hash = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=")
    assert verifier_hash.decode() == query["code_challenge"]
    assert "script" not in page.headers["content-security-policy"]  # the page runs no script at all
    assert page.headers["cache-control"] == "no-store"
    # The launch cookie is gone, and every call went out with TLS verified against the dev CA only,
    # a timeout, no proxy from the environment, from a worker thread (never the event loop's).
    assert LAUNCH_COOKIE not in app.cookies
    assert servers.calls[-2:] == [f"{FHIR}/Patient/{PATIENT}", f"{FHIR}/MedicationRequest"]
    assert servers.sent_with and all(
        s["verify"] == str(settings.ca_path) and s["timeout"] and not s["proxies"] for s in servers.sent_with
    )
    assert threading.get_ident() not in servers.threads


async def test_an_answer_this_browser_did_not_start_is_refused(app: httpx.AsyncClient, servers: Servers) -> None:
    query = await launch(app, servers)
    app.cookies.clear()  # another browser: no launch cookie
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and "does not belong to a launch of this browser" in answer.text
    assert servers.token_forms == []
    app.cookies.set(LAUNCH_COOKIE, "forged")
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and servers.token_forms == []


async def test_a_stray_answer_with_no_launch_at_all_is_refused(app: httpx.AsyncClient, servers: Servers) -> None:
    answer = await app.get("/callback", params={"code": "c-1", "state": "s", "iss": AUTH})
    assert answer.status_code == 400 and servers.calls == []


async def test_an_answer_with_another_state_is_refused_and_ends_the_launch(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    query = await launch(app, servers)
    cookie = app.cookies[LAUNCH_COOKIE]
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"] + "x", "iss": AUTH})
    assert answer.status_code == 400 and servers.token_forms == []
    app.cookies.set(LAUNCH_COOKIE, cookie)  # the right state afterwards finds no launch left
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and servers.token_forms == []


async def test_a_launch_left_too_long_is_refused(app: httpx.AsyncClient, servers: Servers, clock: Clock) -> None:
    query = await launch(app, servers)
    clock.now += SmartAppSettings.model_fields["pending_seconds"].default + 1
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and servers.token_forms == []


async def test_an_answer_from_another_issuer_is_refused_before_the_code_is_redeemed(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    query = await launch(app, servers)
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": "https://evil.test"})
    assert answer.status_code == 400 and "another authorization server" in answer.text
    assert servers.token_forms == []


async def test_an_error_from_the_authorization_server_is_shown_escaped_and_nothing_is_redeemed(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    query = await launch(app, servers)
    answer = await app.get("/callback", params={"error": "<b>access_denied</b>", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and "&lt;b&gt;access_denied&lt;/b&gt;" in answer.text and "<b>" not in answer.text
    assert servers.token_forms == []


async def test_a_state_is_good_for_one_answer_only(app: httpx.AsyncClient, servers: Servers) -> None:
    query = await launch(app, servers)
    cookie = app.cookies[LAUNCH_COOKIE]
    assert (await app.get("/callback", params={"code": "c", "state": query["state"], "iss": AUTH})).status_code == 200
    app.cookies.set(LAUNCH_COOKIE, cookie)
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


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param(httpx.Response(400, json={"error": "invalid_grant"}), id="invalid_grant"),
        pytest.param(httpx.Response(200, json={"token_type": "Bearer"}), id="no-access-token"),
        pytest.param(httpx.Response(200, text="<html>"), id="not-json"),
    ],
)
async def test_a_code_the_authorization_server_does_not_redeem_ends_the_launch_with_a_page(
    app: httpx.AsyncClient, servers: Servers, refusal: httpx.Response
) -> None:
    servers.token_error = refusal
    query = await launch(app, servers)
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and "could not be redeemed" in answer.text
    assert len(servers.token_forms) == 1 and f"{FHIR}/Patient/{PATIENT}" not in servers.calls


async def test_a_token_response_without_an_id_token_is_refused(app: httpx.AsyncClient, servers: Servers) -> None:
    servers.token_extra = {"id_token": None}
    query = await launch(app, servers)
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and "identity token" in answer.text
    assert f"{FHIR}/Patient/{PATIENT}" not in servers.calls


@pytest.mark.parametrize("patient", ["../../admin", "a/b", "", None])
async def test_a_patient_id_that_is_not_a_fhir_id_is_never_put_in_a_url(
    app: httpx.AsyncClient, servers: Servers, patient: str | None
) -> None:
    servers.token_extra = {"patient": patient}
    query = await launch(app, servers)
    answer = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert answer.status_code == 400 and "patient" in answer.text
    assert not any("/Patient/" in call or "admin" in call for call in servers.calls)


async def test_a_redirect_from_the_fhir_server_is_not_followed(app: httpx.AsyncClient, servers: Servers) -> None:
    servers.smart_configuration = httpx.Response(302, headers={"location": "https://evil.test/smart-configuration"})
    answer = await app.get("/launch", params={"iss": FHIR, "launch": "opaque-launch"})
    assert answer.status_code == 502 and "location" not in answer.headers
    assert servers.calls == [f"{FHIR}/.well-known/smart-configuration"]


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"code_challenge_methods_supported": ["plain"]}, id="no-S256"),
        pytest.param({"authorization_endpoint": "http://auth.test/authorize"}, id="plain-http"),
    ],
)
async def test_a_smart_configuration_without_s256_or_https_endpoints_stops_the_launch(
    app: httpx.AsyncClient, servers: Servers, config: dict[str, Any]
) -> None:
    good = servers.handle(httpx.Request("GET", f"{FHIR}/.well-known/smart-configuration")).json()
    servers.smart_configuration = httpx.Response(200, json={**good, **config})
    answer = await app.get("/launch", params={"iss": FHIR, "launch": "opaque-launch"})
    assert answer.status_code == 502 and "location" not in answer.headers and "set-cookie" not in answer.headers


async def test_no_token_reaches_the_logs_even_at_debug(
    app: httpx.AsyncClient, servers: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    query = await launch(app, servers)
    page = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert page.status_code == 200
    assert caplog.records  # requests/urllib3 did log at DEBUG
    logged = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert "access-token-1" not in logged and "eyJ" not in logged and query["state"] not in logged
    # Redaction (common.logs) would mask a JWT anyway; fhirclient, which logs the whole token response
    # at DEBUG, is kept to its errors so that nothing of it is written in the first place.
    assert not [r for r in caplog.records if r.name.startswith("fhirclient") and r.levelno < logging.ERROR]


def test_the_session_trusts_only_the_dev_ca_follows_no_redirect_and_ignores_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    session = smart_session(ca_file=tmp_path / "ca.pem", timeout=3)
    assert session.verify == str(tmp_path / "ca.pem") and session.trust_env is False and session.max_redirects == 0
    assert list(session.adapters) == ["https://"]
    with pytest.raises(requests.exceptions.InvalidSchema):  # plain http: no adapter, nothing sent
        session.get("http://fhir.test/fhir/metadata")
    settings = session.merge_environment_settings("https://fhir.test/fhir", {}, None, None, None)
    assert settings["verify"] == str(tmp_path / "ca.pem") and not settings["proxies"]


async def test_the_app_lists_the_patients_medication_requests_in_the_ehrs_look(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    query = await launch(app, servers)
    page = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert page.status_code == 200, page.text
    assert servers.medication_queries == [{"patient": PATIENT, "_count": "50", "_sort": "-authoredon"}]
    rows = re.findall(r'<tr class="medication" data-id="([^"]+)"><td>([^<]+)</td><td>([^<]*)</td>', page.text)
    assert rows == [("mr-1", "Warfarin 5 MG Oral Tablet", "active"), ("mr-2", "Aspirin 81 MG", "stopped")]
    assert "&lt;b&gt;once daily&lt;/b&gt;" in page.text  # the server's text, escaped
    # The EHR's stylesheet, the very file, served by the app itself (the CSP allows only 'self').
    assert '<link rel="stylesheet" href="/static/ehr.css">' in page.text
    assert "style-src 'self'" in page.headers["content-security-policy"]
    css = await app.get("/static/ehr.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.content == (Path(__file__).resolve().parents[2] / "ehr/ui/static/ehr.css").read_bytes()


async def test_medications_the_server_refuses_are_said_so_and_the_patient_is_still_shown(
    app: httpx.AsyncClient, servers: Servers
) -> None:
    servers.medications_status = 403
    query = await launch(app, servers)
    page = await app.get("/callback", params={"code": "c-1", "state": query["state"], "iss": AUTH})
    assert page.status_code == 200
    assert "Ann Lee" in page.text and 'id="medications-error"' in page.text
    assert 'class="medication"' not in page.text
