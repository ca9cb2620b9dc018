"""The EHR UI's own defences, in-process: security headers and CSP, cookie flags, the sign-in's
state and PKCE, session expiry and tampering, CSRF on every form post and unsafe call, and the
admin elevation. (The whole sign-in against a real authserver and FHIR server, and what the
browser does, are in tests/browser.) The authorization server here is an address nothing
listens on: nothing in these tests may depend on it answering."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.requests import Request

from common.clock import FrozenClock
from common.keys import list_keys
from common.runtime import Runtime
from ehr.app import create_app
from ehr.settings import EhrSettings
from ehr.state import ehr_state
from ehr.ui.session import LOGIN_COOKIE, SESSION_COOKIE, CookieBox, LoginState, Session
from ehr.ui.state import UiState
from tests.integration.apps import serving

EHR = "https://ehr.test"
AUTH = "https://127.0.0.1:1"  # refused at once: the authserver is not part of these tests
FHIR = "https://127.0.0.1:2/fhir"
USER = "Practitioner/p-1"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(time.time())


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> EhrSettings:
    return EhrSettings(
        data_dir=tmp_path, database_url=database_url, public_url=EHR, authserver_url=AUTH, fhir_base_url=FHIR
    )


@pytest.fixture
async def ehr(settings: EhrSettings, clock: FrozenClock) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(settings, clock=clock), EHR) as client:
        yield client


def box(settings: EhrSettings) -> CookieBox:
    return CookieBox(settings.kek())


def session_cookie(settings: EhrSettings, clock: FrozenClock, **changes: Any) -> str:
    now = int(clock())
    session = Session(
        user_ref=USER,
        display="Dr. Test",
        access_token="at-not-a-real-token",
        access_expires_at=now + 280,
        refresh_token=None,
        csrf="csrf-secret-of-this-session",
        created_at=now,
        seen_at=now,
        sid="sid-of-this-session",
    )
    return box(settings).seal(SESSION_COOKIE, asdict(replace(session, **changes)))


async def get_as(ehr: httpx.AsyncClient, session: str, path: str = "/exchanges") -> httpx.Response:
    ehr.cookies.clear()
    ehr.cookies.set(SESSION_COOKIE, session)
    return await ehr.get(path)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie lines by cookie name (the raw line, attributes included)."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


# --- headers -----------------------------------------------------------------------------------


async def test_pages_carry_a_csp_without_inline_script_and_are_never_framed(ehr: httpx.AsyncClient) -> None:
    page = await ehr.get("/")
    assert page.status_code == 200
    csp = {d.strip().split(" ", 1)[0]: d.strip() for d in page.headers["content-security-policy"].split(";")}
    assert csp["default-src"] == "default-src 'self'"
    script = csp["script-src"].split()
    assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script
    assert next(s for s in script[1:] if s != "'self'").startswith("'nonce-")
    assert csp["frame-ancestors"] == "frame-ancestors 'none'"
    assert csp["object-src"] == "object-src 'none'" and csp["base-uri"] == "base-uri 'none'"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"  # no URL (patient ids) to other sites
    assert page.headers["cache-control"] == "no-store"
    assert "<script>" not in page.text and " on" not in page.text.split("<body>", 1)[1].split("=")[0]


async def test_scripts_are_served_by_the_ehr_itself(ehr: httpx.AsyncClient) -> None:
    for name in ("cds.js", "chart.js", "exchanges.js", "admin.js"):
        script = await ehr.get(f"/static/{name}")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        # Nothing is fetched from elsewhere: no absolute URL is fetched, loaded or imported.
        assert not re.search(r"(fetch\(|import\(|src\s*=|href\s*=)\s*['\"`]https?:", script.text)
        assert "cdn" not in script.text.lower()


# --- sign-in -----------------------------------------------------------------------------------


async def test_sign_in_goes_to_the_authserver_with_pkce_s256_state_and_nonce_bound_to_the_browser(
    ehr: httpx.AsyncClient, settings: EhrSettings
) -> None:
    start = await ehr.get("/login", params={"next": "/patients/abc"})
    assert start.status_code == 302
    target = urlsplit(start.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{AUTH}/authorize"
    query = {k: v[0] for k, v in parse_qs(target.query).items()}
    assert query["response_type"] == "code" and query["client_id"] == "ehr"
    assert query["redirect_uri"] == f"{EHR}/oauth/callback"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["aud"] == FHIR
    assert set(query["scope"].split()) >= {"openid", "fhirUser"}
    cookie = set_cookies(start)[LOGIN_COOKIE]
    for flag in ("Secure", "HttpOnly", "SameSite=lax", "Path=/"):
        assert flag.lower() in cookie.lower()
    assert "domain=" not in cookie.lower()
    login = box(settings).open(LOGIN_COOKIE, start.cookies[LOGIN_COOKIE])
    assert login is not None
    assert login["state"] == query["state"] and login["nonce"] == query["nonce"]
    assert login["next_path"] == "/patients/abc"
    assert query["code_challenge"] != login["verifier"]  # the verifier never leaves the EHR


async def test_sign_in_never_returns_to_another_origin(ehr: httpx.AsyncClient, settings: EhrSettings) -> None:
    for evil in ("https://evil.test/x", "//evil.test/x", "/\\evil.test", "javascript:alert(1)"):
        start = await ehr.get("/login", params={"next": evil})
        login = box(settings).open(LOGIN_COOKIE, start.cookies[LOGIN_COOKIE])
        assert login is not None and login["next_path"] == "/patients"


async def test_a_callback_with_a_state_this_browser_did_not_start_is_refused(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock
) -> None:
    await ehr.get("/login")
    answer = await ehr.get("/oauth/callback", params={"code": "c", "state": "someone-elses", "iss": AUTH})
    assert answer.status_code == 400
    assert SESSION_COOKIE not in set_cookies(answer)
    # No login cookie at all (a CSRF'd callback in a fresh browser): refused the same way.
    ehr.cookies.clear()
    answer = await ehr.get("/oauth/callback", params={"code": "c", "state": "s", "iss": AUTH})
    assert answer.status_code == 400 and SESSION_COOKIE not in set_cookies(answer)


async def test_a_callback_from_another_issuer_is_refused(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock
) -> None:
    start = await ehr.get("/login")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    answer = await ehr.get("/oauth/callback", params={"code": "c", "state": state, "iss": "https://evil.test"})
    assert answer.status_code == 400 and SESSION_COOKIE not in set_cookies(answer)


async def test_a_stale_sign_in_is_refused(ehr: httpx.AsyncClient, clock: FrozenClock) -> None:
    start = await ehr.get("/login")
    state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    clock.advance(601)
    answer = await ehr.get("/oauth/callback", params={"code": "c", "state": state, "iss": AUTH})
    assert answer.status_code == 400 and SESSION_COOKIE not in set_cookies(answer)


# --- sessions ----------------------------------------------------------------------------------


async def test_pages_need_a_session(ehr: httpx.AsyncClient) -> None:
    for path in ("/patients", "/patients/abc", "/exchanges", "/admin", "/admin/keys"):
        answer = await ehr.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login?next=")


async def test_a_tampered_or_foreign_session_cookie_is_no_session(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock
) -> None:
    good = session_cookie(settings, clock)
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    other_key = CookieBox(b"\x01" * 32).seal(SESSION_COOKIE, box(settings).open(SESSION_COOKIE, good) or {})
    login_as_session = box(settings).seal(LOGIN_COOKIE, asdict(LoginState("s", "v", "n", int(clock()))))
    for value in (tampered, other_key, login_as_session, "not-even-base64!"):
        answer = await get_as(ehr, value)
        assert answer.status_code == 303, value


async def test_a_session_expires_when_idle_and_after_its_absolute_lifetime(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock
) -> None:
    live = await get_as(ehr, session_cookie(settings, clock))
    assert live.status_code == 200
    cookie = set_cookies(live)[SESSION_COOKIE]
    for flag in ("Secure", "HttpOnly", "SameSite=lax", "Path=/"):
        assert flag.lower() in cookie.lower()
    assert SESSION_COOKIE.startswith("__Host-") and "domain=" not in cookie.lower()

    idle = session_cookie(settings, clock, seen_at=int(clock()) - 1801)
    assert (await get_as(ehr, idle)).status_code == 303
    old = session_cookie(settings, clock, created_at=int(clock()) - 8 * 3600 - 1)
    assert (await get_as(ehr, old)).status_code == 303


async def test_an_expired_access_token_without_refresh_ends_the_session(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock
) -> None:
    expired = session_cookie(settings, clock, access_expires_at=int(clock()) - 1)
    assert (await get_as(ehr, expired)).status_code == 303


# --- CSRF ----------------------------------------------------------------------------------------


async def test_sign_out_needs_the_csrf_token(ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock) -> None:
    ehr.cookies.set(SESSION_COOKIE, session_cookie(settings, clock))
    refused = await ehr.post("/logout", data={"csrf": "wrong"})
    assert refused.status_code == 403 and SESSION_COOKIE not in set_cookies(refused)
    refused = await ehr.post("/logout")
    assert refused.status_code == 403
    cross = await ehr.post("/logout", data={"csrf": "csrf-secret-of-this-session"}, headers={"Origin": "null"})
    assert cross.status_code == 403
    done = await ehr.post("/logout", data={"csrf": "csrf-secret-of-this-session"})
    assert done.status_code == 303
    assert "max-age=0" in set_cookies(done)[SESSION_COOKIE].lower()


async def test_a_smart_launch_needs_the_csrf_header_and_the_ehrs_origin(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock
) -> None:
    ehr.cookies.set(SESSION_COOKIE, session_cookie(settings, clock))
    body = {"url": "https://app.test/launch", "patientId": "pat-1"}
    assert (await ehr.post("/ui/launch", json=body)).status_code == 403
    assert (await ehr.post("/ui/launch", json=body, headers={"X-CSRF-Token": "wrong"})).status_code == 403
    cross = {"X-CSRF-Token": "csrf-secret-of-this-session", "Origin": "https://localhost:9004"}
    assert (await ehr.post("/ui/launch", json=body, headers=cross)).status_code == 403
    # Without a session at all: 401, nothing else happens.
    ehr.cookies.clear()
    assert (await ehr.post("/ui/launch", json=body, headers={"X-CSRF-Token": "x"})).status_code == 401


async def test_the_api_session_resolver_refuses_unsafe_calls_without_the_csrf_header(
    settings: EhrSettings, clock: FrozenClock
) -> None:
    app = create_app(settings, clock=clock)
    async with serving(app, EHR):
        runtime: Runtime = app.state.runtime
        ui = UiState(ehr_state(app).ui_config, box(settings), _no_auth(), runtime)
        cookie = f"{SESSION_COOKIE}={session_cookie(settings, clock)}"

        def request(method: str, headers: dict[str, str]) -> Request:
            raw = [(b"cookie", cookie.encode())] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            return Request({"type": "http", "method": method, "path": "/api/x", "headers": raw, "query_string": b""})

        got = await ui.resolve(request("GET", {}))
        assert got is not None and got.user_ref == USER and got.session_token == "at-not-a-real-token"
        assert not got.is_admin
        assert await ui.resolve(request("POST", {})) is None
        assert await ui.resolve(request("POST", {"X-CSRF-Token": "wrong"})) is None
        forged_origin = {"X-CSRF-Token": "csrf-secret-of-this-session", "Origin": "https://evil.test"}
        assert await ui.resolve(request("POST", forged_origin)) is None
        good = await ui.resolve(request("POST", {"X-CSRF-Token": "csrf-secret-of-this-session", "Origin": EHR}))
        assert good is not None and good.user_ref == USER


def _no_auth() -> Any:
    """The resolver never calls the authorization server; anything it touched would fail here."""
    return object()


# --- admin -------------------------------------------------------------------------------------


async def test_admin_elevation_needs_the_csrf_token_and_the_admin_token(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock
) -> None:
    ehr.cookies.set(SESSION_COOKIE, session_cookie(settings, clock))
    token = settings.admin_secret()
    assert (await ehr.post("/admin/elevate", data={"admin_token": token})).status_code == 403
    wrong = await ehr.post("/admin/elevate", data={"admin_token": "guess", "csrf": "csrf-secret-of-this-session"})
    assert wrong.status_code == 403
    opened = box(settings).open(SESSION_COOKIE, wrong.cookies.get(SESSION_COOKIE))
    assert opened is not None and opened["is_admin"] is False
    assert (await ehr.get("/admin/keys")).status_code == 303  # still not an admin

    good = await ehr.post("/admin/elevate", data={"admin_token": token, "csrf": "csrf-secret-of-this-session"})
    assert good.status_code == 303 and good.headers["location"] == "/admin/services"
    opened = box(settings).open(SESSION_COOKIE, good.cookies[SESSION_COOKIE])
    assert opened is not None and opened["is_admin"] is True
    assert token not in str(opened)  # the token itself is never kept in the session
    keys = await ehr.get("/admin/keys")
    assert keys.status_code == 200 and 'id="keys"' in keys.text


async def test_key_rotation_from_the_admin_page_needs_the_csrf_token(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock, database_url: str
) -> None:
    ehr.cookies.set(SESSION_COOKIE, session_cookie(settings, clock, is_admin=True))
    app_runtime_keys = await _ehr_keys(ehr)
    assert (await ehr.post("/admin/keys/rotate", data={"csrf": "wrong"})).status_code == 403
    assert await _ehr_keys(ehr) == app_runtime_keys
    rotated = await ehr.post("/admin/keys/rotate", data={"csrf": "csrf-secret-of-this-session"})
    assert rotated.status_code == 303
    after = await _ehr_keys(ehr)
    assert len(after) == len(app_runtime_keys) + 1 and set(app_runtime_keys) < set(after)


async def _ehr_keys(ehr: httpx.AsyncClient) -> list[str]:
    transport = ehr._transport
    assert isinstance(transport, httpx.ASGITransport)
    runtime: Runtime = transport.app.state.runtime  # type: ignore[attr-defined]
    return sorted(r.kid for r in await list_keys(runtime.sessions) if r.service == "ehr")


async def test_a_non_admin_session_cannot_use_the_admin_forms(
    ehr: httpx.AsyncClient, settings: EhrSettings, clock: FrozenClock
) -> None:
    ehr.cookies.set(SESSION_COOKIE, session_cookie(settings, clock))
    before = await _ehr_keys(ehr)
    answer = await ehr.post("/admin/keys/rotate", data={"csrf": "csrf-secret-of-this-session"})
    assert answer.status_code == 303 and answer.headers["location"] == "/admin"
    assert await _ehr_keys(ehr) == before
    answer = await ehr.post("/admin/clients/smart-example/disable", data={"csrf": "csrf-secret-of-this-session"})
    assert answer.status_code == 303 and answer.headers["location"] == "/admin"
