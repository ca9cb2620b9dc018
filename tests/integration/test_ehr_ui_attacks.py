"""The EHR UI attacked, in-process: markup in FHIR data rendered as text, the CSP and headers on
every page, admin pages refused to a session that has not shown the admin token, a planted
session replaced by a new one at sign-in (fixation), a return path that only stays local, and a
SMART launch carrying another patient's encounter. The FHIR server and the authorization server
are recording doubles (httpx.MockTransport and an AuthClient whose token calls are faked)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from common.clock import FrozenClock
from ehr.app import create_app
from ehr.settings import EhrSettings
from ehr.state import ehr_state
from ehr.ui.oauth import AuthClient, Tokens
from ehr.ui.session import LOGIN_COOKIE, SESSION_COOKIE, CookieBox, Session
from ehr.ui.state import UiState, ui_state
from tests.integration.apps import serving

EHR = "https://ehr.test"
AUTH = "https://auth.test"
FHIR = "https://fhir.test/fhir"
USER = "Practitioner/p-1"
PATIENT = "pat-1"
CSRF = "csrf-secret-of-this-session"
APP_LAUNCH = "https://app.test/launch"
XSS = '<img src=x onerror="alert(1)"><script>window.pwned=1</script>'


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


@dataclass
class FakeFhir:
    """One visible patient whose every text field carries markup; Encounter enc-x is another patient's."""

    requests: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix("/fhir/")
        concept = {"text": XSS}
        if path == f"Patient/{PATIENT}":
            return httpx.Response(
                200, json={"resourceType": "Patient", "id": PATIENT, "name": [{"text": XSS}], "gender": XSS}
            )
        if path == "Patient":
            return httpx.Response(200, json=bundle({"resourceType": "Patient", "id": PATIENT, "name": [{"text": XSS}]}))
        if path == "Encounter/enc-x":
            return httpx.Response(
                200, json={"resourceType": "Encounter", "id": "enc-x", "subject": {"reference": "Patient/pat-9"}}
            )
        resources: dict[str, dict[str, Any]] = {
            "Condition": {"resourceType": "Condition", "id": "c1", "code": concept, "clinicalStatus": concept},
            "MedicationRequest": {
                "resourceType": "MedicationRequest",
                "id": "m1",
                "medicationCodeableConcept": concept,
            },
            "AllergyIntolerance": {"resourceType": "AllergyIntolerance", "id": "a1", "code": concept},
            "Observation": {"resourceType": "Observation", "id": "o1", "code": concept, "valueString": XSS},
            "Encounter": {"resourceType": "Encounter", "id": "e1", "type": [concept], "status": XSS},
            "ServiceRequest": {"resourceType": "ServiceRequest", "id": "s1", "code": concept, "status": XSS},
        }
        found = resources.get(path)
        if found is not None:
            return httpx.Response(200, json=bundle(found))
        return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})


class FakeAuth(AuthClient):
    """The authorization server's answers, without one: a code redeems to tokens for `USER`."""

    launches: list[dict[str, Any]]

    async def redeem(self, code: str, verifier: str, nonce: str) -> Tokens:
        claims = {"fhirUser": f"{FHIR}/{USER}", "name": "Dr. Test", "nonce": nonce}
        return Tokens("fresh-access-token", int(self.clock()) + 300, "fresh-refresh-token", claims)

    async def revoke(self, token: str, hint: str) -> None:
        return None

    async def register_launch(self, body: dict[str, Any]) -> str:
        self.launches.append(body)
        return "opaque-launch"


class FakeApps:
    async def list_clients(self) -> list[dict[str, Any]]:
        return [
            {"client_id": "app", "kind": "smart-app", "active": True, "launch_url": APP_LAUNCH, "scope": XSS},
            # An id that would steer the disable form elsewhere if it went into the path as is.
            {"client_id": "x/../../keys/rotate", "kind": "backend", "active": True, "scope": ""},
        ]


@dataclass
class Ehr:
    client: httpx.AsyncClient
    settings: EhrSettings
    clock: FrozenClock
    fhir: FakeFhir
    auth: FakeAuth

    def session(self, **changes: Any) -> str:
        now = int(self.clock())
        session = Session(USER, "Dr. Test", "the-users-token", now + 280, None, CSRF, now, now, sid="sid-1")
        return CookieBox(self.settings.kek()).seal(SESSION_COOKIE, asdict(replace(session, **changes)))

    def opened(self, response: httpx.Response) -> dict[str, Any] | None:
        return CookieBox(self.settings.kek()).open(SESSION_COOKIE, response.cookies.get(SESSION_COOKIE))


@pytest.fixture
async def ehr(tmp_path: Path, database_url: str) -> AsyncIterator[Ehr]:
    clock = FrozenClock(time.time())
    settings = EhrSettings(
        data_dir=tmp_path, database_url=database_url, public_url=EHR, authserver_url=AUTH, fhir_base_url=FHIR
    )
    app = create_app(settings, clock=clock)
    fhir = FakeFhir()
    async with serving(app, EHR) as client, httpx.AsyncClient(transport=httpx.MockTransport(fhir.handler)) as http:

        class _Request:  # ui_state reads only request.app
            def __init__(self) -> None:
                self.app = app

        real = ui_state(_Request())  # type: ignore[arg-type]
        runtime = replace(real.runtime, http=http)
        auth = FakeAuth(real.config, http, runtime.signing_keys, clock)
        auth.launches = []
        ehr_state(app).ui = UiState(real.config, real.box, auth, runtime)
        ehr_state(app).parts().authserver_admin = FakeApps()  # type: ignore[assignment]
        yield Ehr(client, settings, clock, fhir, auth)


# --- XSS -----------------------------------------------------------------------------------------


async def test_markup_in_names_codes_and_values_from_the_fhir_server_is_shown_as_text(ehr: Ehr) -> None:
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session())
    for path in ("/patients", f"/patients/{PATIENT}", f"/patients/{PATIENT}/sections"):
        page = await ehr.client.get(path)
        assert page.status_code == 200, path
        assert "<img src=x" not in page.text and "<script>window.pwned" not in page.text, path
        assert "&lt;img src=x onerror=" in page.text, path  # there, as text
    chart = await ehr.client.get(f"/patients/{PATIENT}")
    # Every section got the hostile text (so each was rendered and escaped, not left out).
    for section in ("problems", "medications", "allergies", "labs", "encounters", "orders"):
        block = chart.text.split(f'id="{section}"', 1)[1].split("</section>", 1)[0]
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in block, section


# --- headers on every page -------------------------------------------------------------------------


async def test_every_page_carries_the_csp_without_unsafe_inline_and_has_no_inline_script_or_handler(
    ehr: Ehr,
) -> None:
    pages = {"/": None, "/patients": False, f"/patients/{PATIENT}": False, "/patients/nobody": False}
    pages |= {
        "/exchanges": False,
        "/admin": False,
        "/admin/services": True,
        "/admin/keys": True,
        "/admin/clients": True,
    }
    for path, admin in pages.items():
        ehr.client.cookies.clear()
        if admin is not None:
            ehr.client.cookies.set(SESSION_COOKIE, ehr.session(is_admin=admin))
        page = await ehr.client.get(path)
        assert page.status_code in (200, 404), path
        policy = page.headers["content-security-policy"]
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy, path
        assert "script-src 'self' 'nonce-" in policy and "frame-ancestors 'none'" in policy, path
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["cache-control"] == "no-store"
        scripts = re.findall(r"<script\b[^>]*>", page.text)
        assert all('src="/static/' in s for s in scripts), (path, scripts)
        assert not re.search(r"<[^>]+\s(on[a-z]+|style)\s*=", page.text), path
    script = await ehr.client.get("/static/chart.js")
    assert script.headers["x-content-type-options"] == "nosniff"


# --- admin -----------------------------------------------------------------------------------------


async def test_the_admin_pages_refuse_a_session_that_has_not_shown_the_admin_token(ehr: Ehr) -> None:
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session())
    for path in ("/admin/services", "/admin/clients", "/admin/keys"):
        answer = await ehr.client.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/admin", path
    services = await ehr.client.get("/api/services")
    assert services.status_code == 403
    empty = await ehr.client.post("/admin/elevate", data={"admin_token": "", "csrf": CSRF})
    assert empty.status_code == 403
    assert (ehr.opened(empty) or {}).get("is_admin") is False


async def test_removing_a_cds_service_from_the_admin_page_needs_elevation_the_csrf_token_and_the_ehrs_origin(
    ehr: Ehr,
) -> None:
    path = "/api/services/greeting"
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session())
    assert (await ehr.client.delete(path, headers={"X-CSRF-Token": CSRF})).status_code == 403  # not elevated
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session(is_admin=True))
    # Without the session's CSRF token, or from another origin, the session does not count at all.
    assert (await ehr.client.delete(path)).status_code == 401
    assert (await ehr.client.delete(path, headers={"X-CSRF-Token": "guessed"})).status_code == 401
    cross_site = {"X-CSRF-Token": CSRF, "Origin": "https://evil.test"}
    assert (await ehr.client.delete(path, headers=cross_site)).status_code == 401
    # Elevated, with the session's token, from the EHR's own page: the registry answers.
    reached = await ehr.client.delete(path, headers={"X-CSRF-Token": CSRF, "Origin": EHR})
    assert reached.status_code == 404 and reached.json()["message"] == "no CDS Service 'greeting'"


# --- sign-in: fixation and redirects ------------------------------------------------------------


async def test_signing_in_replaces_a_planted_session_with_a_new_one(ehr: Ehr) -> None:
    # An attacker's cookie (e.g. tossed from a sibling port of localhost), with a CSRF secret they know.
    planted = ehr.session(user_ref="Practitioner/attacker", csrf="known-to-the-attacker", is_admin=True)
    ehr.client.cookies.set(SESSION_COOKIE, planted)
    ehr.clock.advance(5)
    start = await ehr.client.get("/login", params={"next": f"/patients/{PATIENT}"})
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    back = await ehr.client.get("/oauth/callback", params={"code": "c", "state": state, "iss": AUTH})
    assert back.status_code == 303 and back.headers["location"] == f"/patients/{PATIENT}"
    session = ehr.opened(back)
    assert session is not None and back.cookies[SESSION_COOKIE] != planted
    assert session["user_ref"] == USER and session["is_admin"] is False
    assert session["csrf"] != "known-to-the-attacker" and len(session["csrf"]) >= 32
    assert session["sid"] != "sid-1" and len(session["sid"]) >= 32  # a new session id
    assert session["created_at"] == int(ehr.clock()) and session["access_token"] == "fresh-access-token"
    assert "max-age=0" in next(c for c in back.headers.get_list("set-cookie") if c.startswith(LOGIN_COOKIE)).lower()
    # The login state is single-use: the same callback again starts nothing.
    again = await ehr.client.get("/oauth/callback", params={"code": "c", "state": state, "iss": AUTH})
    assert again.status_code == 400


async def test_after_sign_in_the_browser_only_returns_to_a_local_path(ehr: Ehr) -> None:
    for evil in ("https://evil.test/", "//evil.test", "/\\evil.test", "/%2F/evil.test", "https:evil.test", "/ok?x=//e"):
        ehr.client.cookies.clear()
        start = await ehr.client.get("/login", params={"next": evil})
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        back = await ehr.client.get("/oauth/callback", params={"code": "c", "state": state, "iss": AUTH})
        assert back.status_code == 303 and back.headers["location"] == "/patients", evil
    # Signing out always lands on the EHR's own start page.
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session())
    out = await ehr.client.post("/logout", data={"csrf": CSRF, "next": "https://evil.test/"})
    assert out.status_code == 303 and out.headers["location"] == "/"


# --- IDOR: a SMART launch -------------------------------------------------------------------------


async def test_a_smart_launch_with_another_patients_encounter_registers_nothing(ehr: Ehr) -> None:
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session())
    headers = {"X-CSRF-Token": CSRF}
    body = {"url": APP_LAUNCH, "patientId": PATIENT, "encounterId": "enc-x"}
    refused = await ehr.client.post("/ui/launch", json=body, headers=headers)
    assert refused.status_code == 400 and ehr.auth.launches == []
    foreign = await ehr.client.post("/ui/launch", json={**body, "patientId": "pat-9"}, headers=headers)
    assert foreign.status_code == 404 and ehr.auth.launches == []
    unregistered = await ehr.client.post(
        "/ui/launch", json={"url": "https://evil.test/launch", "patientId": PATIENT}, headers=headers
    )
    assert unregistered.status_code == 403 and ehr.auth.launches == []
    done = await ehr.client.post("/ui/launch", json={"url": APP_LAUNCH, "patientId": PATIENT}, headers=headers)
    assert done.status_code == 200
    assert json.loads(done.text)["url"].startswith(APP_LAUNCH + "?iss=")
    assert ehr.auth.launches == [{"client_id": "app", "user": USER, "patient": PATIENT}]


async def test_the_clients_page_shows_registry_data_as_text_and_keeps_each_disable_form_on_its_client(
    ehr: Ehr,
) -> None:
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session(is_admin=True))
    page = await ehr.client.get("/admin/clients")
    assert page.status_code == 200
    assert "<script>window.pwned" not in page.text and "&lt;script&gt;window.pwned" in page.text
    actions = re.findall(r'action="([^"]+)"', page.text)
    assert "/admin/clients/x%2F..%2F..%2Fkeys%2Frotate/disable" in actions, actions
    assert "/admin/clients/app/disable" in actions


# --- a copied cookie after sign-out ------------------------------------------------------------


async def test_a_copy_of_the_session_cookie_is_refused_everywhere_after_sign_out(ehr: Ehr) -> None:
    copied = ehr.session(is_admin=True)  # an admin session: its pages read nothing from FHIR
    ehr.client.cookies.set(SESSION_COOKIE, copied)
    assert (await ehr.client.get("/admin/keys")).status_code == 200
    assert (await ehr.client.get("/api/exchanges")).status_code == 200
    out = await ehr.client.post("/logout", data={"csrf": CSRF})
    assert out.status_code == 303
    # The thief replays the copy while its access token still has minutes to live.
    ehr.client.cookies.clear()
    ehr.client.cookies.set(SESSION_COOKIE, copied)
    for path in ("/exchanges", "/admin/keys", "/admin/services", f"/patients/{PATIENT}"):
        answer = await ehr.client.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), path
    assert (await ehr.client.get("/api/exchanges")).status_code == 401
    assert (await ehr.client.get("/api/services")).status_code == 401
    rotate = await ehr.client.post("/admin/keys/rotate", data={"csrf": CSRF})
    assert rotate.status_code == 303 and rotate.headers["location"] == "/login"
    launch = await ehr.client.post(
        "/ui/launch", json={"url": APP_LAUNCH, "patientId": PATIENT}, headers={"X-CSRF-Token": CSRF}
    )
    assert launch.status_code == 401 and ehr.auth.launches == []
    # Another session of the same user is not affected.
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session(sid="another-sign-in"))
    assert (await ehr.client.get("/exchanges")).status_code == 200


async def test_a_session_cookie_without_a_session_id_is_no_session(ehr: Ehr) -> None:
    ehr.client.cookies.set(SESSION_COOKIE, ehr.session(sid=""))
    answer = await ehr.client.get("/exchanges")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
