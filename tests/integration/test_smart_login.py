"""The login page: CSRF, no username oracle, the session cookie, and the failed-login rate limit
shared by replicas through the database."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
from sqlalchemy import select, update

from authserver.app import create_app
from authserver.models import LoginSessionRow, UserRow
from authserver.sessions import SESSION_COOKIE, digest
from tests.integration.apps import serving
from tests.integration.authharness import AUTH
from tests.integration.smartharness import PASSWORD, Smart, csrf_in, hidden_fields, pkce, running_smart


@asynccontextmanager
async def browser_from(smart: Smart, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another browser, on another client IP, against the same running app."""
    transport = httpx.ASGITransport(app=smart.auth.app, client=(ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url=AUTH) as browser:
        yield browser


async def _post_login(
    browser: httpx.AsyncClient, username: str, password: str, *, csrf: str | None = "from-page"
) -> httpx.Response:
    page = await browser.get("/login")
    if 'action="/logout"' in page.text:  # someone is signed in: sign out first
        await browser.post("/logout", data={"csrf": csrf_in(page.text)})
        page = await browser.get("/login")
    data = {"username": username, "password": password}
    if csrf == "from-page":
        data["csrf"] = csrf_in(page.text)
    elif csrf is not None:
        data["csrf"] = csrf
    return await browser.post("/login", data=data)


def _session_cookie(response: httpx.Response) -> SimpleCookie:
    cookies = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        cookies.load(header)
    return cookies


# --- CSRF --------------------------------------------------------------------------------------


async def test_a_login_without_or_with_a_wrong_csrf_token_is_refused_with_403(smart: Smart) -> None:
    for csrf in (None, "", "forged-token"):
        response = await _post_login(smart.browser, "dr.a", PASSWORD, csrf=csrf)
        assert response.status_code == 403
        assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    # A token taken from another browser's page does not fit this browser's cookie.
    async with browser_from(smart, "127.0.0.1") as other:
        foreign = csrf_in((await other.get("/login")).text)
    response = await _post_login(smart.browser, "dr.a", PASSWORD, csrf=foreign)
    assert response.status_code == 403
    # And a browser without the CSRF cookie (a cross-site form post) is refused too.
    token = csrf_in((await smart.browser.get("/login")).text)
    smart.browser.cookies.clear()
    response = await smart.browser.post("/login", data={"username": "dr.a", "password": PASSWORD, "csrf": token})
    assert response.status_code == 403


async def test_a_csrf_token_from_one_replica_is_accepted_by_another(smart: Smart) -> None:
    page = await smart.browser.get("/login")
    async with replica(smart) as other:
        other.cookies = smart.browser.cookies
        response = await other.post(
            "/login", data={"username": "dr.a", "password": PASSWORD, "csrf": csrf_in(page.text)}
        )
    assert response.status_code == 303


# --- no username oracle --------------------------------------------------------------------------


async def test_a_wrong_password_an_unknown_user_and_a_disabled_user_get_the_same_answer(smart: Smart) -> None:
    async with smart.auth.app.state.runtime.sessions() as session, session.begin():
        await session.execute(update(UserRow).where(UserRow.username == "dr.b").values(active=False))
    answers = []
    for username, password in (("dr.a", "wrong"), ("nobody", "wrong"), ("dr.b", PASSWORD), ("", "")):
        response = await _post_login(smart.browser, username, password)
        assert response.status_code == 401
        assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
        assert "Wrong username or password." in response.text
        answers.append(re.sub(r'value="[^"]*"', "", response.text.split("<main>")[1]))
    assert len(set(answers)) == 1


# --- the session -----------------------------------------------------------------------------


async def test_a_login_sets_a_secure_httponly_lax_short_session_cookie_whose_value_is_not_stored(
    smart: Smart,
) -> None:
    response = await _post_login(smart.browser, "dr.a", PASSWORD)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    cookie = _session_cookie(response)[SESSION_COOKIE]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "lax"
    assert cookie["path"] == "/" and not cookie["domain"]
    assert int(cookie["max-age"]) == smart.settings.session_lifetime_seconds <= 1800
    assert len(cookie.value) >= 43 and "dr.a" not in cookie.value
    async with smart.auth.app.state.runtime.sessions() as session:
        rows = list((await session.execute(select(LoginSessionRow))).scalars())
    assert [r.id_hash for r in rows] == [digest(cookie.value)]
    assert cookie.value not in {r.id_hash for r in rows}


async def test_a_new_login_never_keeps_the_previous_session_id(smart: Smart) -> None:
    page = await smart.browser.get("/login")
    token = csrf_in(page.text)
    form = {"password": PASSWORD, "csrf": token}
    first = _session_cookie(await smart.browser.post("/login", data={**form, "username": "dr.a"}))
    second = _session_cookie(await smart.browser.post("/login", data={**form, "username": "dr.b"}))
    assert first[SESSION_COOKIE].value != second[SESSION_COOKIE].value
    async with smart.auth.app.state.runtime.sessions() as session:
        assert await session.get(LoginSessionRow, digest(first[SESSION_COOKIE].value)) is None
        assert await session.get(LoginSessionRow, digest(second[SESSION_COOKIE].value)) is not None


async def test_an_expired_session_sends_the_user_back_to_login(smart: Smart) -> None:
    await smart.login("dr.a")
    _, challenge = pkce()
    assert (await smart.authorize(smart.authorize_params(challenge))).status_code == 200  # the picker
    smart.clock.advance(smart.settings.session_lifetime_seconds + 1)
    response = await smart.authorize(smart.authorize_params(challenge))
    assert response.status_code == 302 and response.headers["location"].startswith("/login?next=")


async def test_signing_out_ends_the_session(smart: Smart) -> None:
    await smart.login("dr.a")
    page = await smart.browser.get("/login")
    assert "Signed in" in page.text
    assert (await smart.browser.post("/logout", data={"csrf": "forged"})).status_code == 403
    response = await smart.browser.post("/logout", data={"csrf": csrf_in(page.text)})
    assert response.status_code == 303
    assert "Sign in to" in (await smart.browser.get("/login")).text


async def test_login_goes_back_only_to_this_servers_authorize_endpoint(smart: Smart) -> None:
    for next_url in ("https://evil.test/", "//evil.test/authorize?x", "/admin/clients", "/authorize\\@evil.test"):
        page = await smart.browser.get("/login", params={"next": next_url})
        assert hidden_fields(page.text)["next"] == ""
        response = await smart.browser.post(
            "/login",
            data={"username": "dr.a", "password": PASSWORD, "csrf": csrf_in(page.text), "next": next_url},
        )
        assert response.headers["location"] == "/login"
        await smart.browser.post("/logout", data={"csrf": csrf_in((await smart.browser.get("/login")).text)})


# --- rate limit --------------------------------------------------------------------------------


@asynccontextmanager
async def limited(tmp_path: Path, database_url: str, **limits: int) -> AsyncIterator[Smart]:
    async with running_smart(tmp_path, database_url, None, login_failure_window_seconds=600, **limits) as harness:
        yield harness


@asynccontextmanager
async def replica(smart: Smart) -> AsyncIterator[httpx.AsyncClient]:
    """A second authorization server process on the same database (another replica)."""
    app = create_app(smart.settings, clock=smart.clock)
    async with serving(app, AUTH) as client:
        yield client


async def test_failed_logins_for_one_username_end_in_429_even_with_the_right_password(
    tmp_path: Path, database_url: str
) -> None:
    async with limited(tmp_path, database_url, login_max_failures_per_user=3, login_max_failures_per_ip=100) as smart:
        for _ in range(3):
            assert (await _post_login(smart.browser, "dr.a", "guess")).status_code == 401
        locked = await _post_login(smart.browser, "dr.a", PASSWORD)
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 600
        assert SESSION_COOKIE not in locked.headers.get("set-cookie", "")
        # The same answer for a username that does not exist once it is locked: no oracle.
        for _ in range(3):
            await _post_login(smart.browser, "nobody", "guess")
        assert (await _post_login(smart.browser, "nobody", "guess")).status_code == 429
        # Another username from the same IP is not locked by the per-username counter.
        assert (await _post_login(smart.browser, "dr.b", PASSWORD)).status_code == 303
        smart.clock.advance(601)
        assert (await _post_login(smart.browser, "dr.a", PASSWORD)).status_code == 303


async def test_failed_logins_from_one_ip_lock_every_username_from_that_ip_but_not_other_ips(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        limited(tmp_path, database_url, login_max_failures_per_user=100, login_max_failures_per_ip=4) as smart,
        browser_from(smart, "203.0.113.7") as attacker,
        browser_from(smart, "198.51.100.1") as other,
    ):
        for username in ("dr.a", "dr.a", "nobody", "someone"):
            assert (await _post_login(attacker, username, "guess")).status_code == 401
        response = await _post_login(attacker, "dr.b", PASSWORD)  # another username, right password
        assert response.status_code == 429
        assert (await _post_login(other, "dr.b", PASSWORD)).status_code == 303


async def test_the_failure_counters_are_shared_by_replicas_through_the_database(
    tmp_path: Path, database_url: str
) -> None:
    async with (
        limited(tmp_path, database_url, login_max_failures_per_user=3, login_max_failures_per_ip=100) as smart,
        replica(smart) as second,
    ):
        assert (await _post_login(smart.browser, "dr.a", "guess")).status_code == 401
        assert (await _post_login(second, "dr.a", "guess")).status_code == 401
        assert (await _post_login(smart.browser, "dr.a", "guess")).status_code == 401
        assert (await _post_login(second, "dr.a", PASSWORD)).status_code == 429
        assert (await _post_login(smart.browser, "dr.a", PASSWORD)).status_code == 429


async def test_a_successful_login_clears_the_usernames_counter(tmp_path: Path, database_url: str) -> None:
    async with limited(tmp_path, database_url, login_max_failures_per_user=3, login_max_failures_per_ip=100) as smart:
        for _ in range(2):
            await _post_login(smart.browser, "dr.a", "guess")
        assert (await smart.login("dr.a")).status_code == 303
        for _ in range(2):
            assert (await _post_login(smart.browser, "dr.a", "guess")).status_code == 401
        assert (await smart.login("dr.a")).status_code == 303
