"""The login page (GET/POST /login, POST /logout) and what every HTML page of this server shares.

- Username + password, checked with argon2 (authserver/passwords.py). An unknown, disabled or
  wrong user gets the same words, the same status and the same work (a dummy argon2 verification),
  so the page never tells whether a username exists.
- CSRF: signed double-submit token (authserver/sessions.py); missing or wrong → 403.
- Rate limit (OAuth and SMART leave it to the server; OWASP authentication guidance): failed logins are
  counted per username and per client IP in `auth_login_throttle`, a fixed window shared by every
  replica through the database. Once either counter reaches its limit the request gets 429 with
  Retry-After, before the password is even checked (so a correct guess is not confirmed either).
  A success clears the username's counter, never the IP's. The check and the count are separate
  statements, so a burst of parallel guesses can overshoot the limit by its own width, once.
- The client IP is the ASGI peer address: run behind a proxy with uvicorn's --proxy-headers and
  --forwarded-allow-ips so that it is the real client; X-Forwarded-For is never read here.
- Pages: Jinja2 with autoescaping, no script at all, one inline <style> allowed by a per-response
  CSP nonce, `frame-ancestors 'none'`, X-Frame-Options DENY, Referrer-Policy no-referrer,
  Cache-Control no-store (they carry CSRF tokens).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from sqlalchemy import case, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from authserver import sessions, users
from authserver.deps import StateDep
from authserver.models import LoginThrottleRow, UserRow
from authserver.passwords import hash_password, verify_password
from authserver.sessions import CSRF_COOKIE, SESSION_COOKIE, CsrfSigner, LoginSession
from authserver.settings import AuthSettings
from authserver.users import User
from common.runtime import Runtime

TEMPLATES = Path(__file__).with_name("templates")
LOGIN_PURPOSE = "login"
LOGOUT_PURPOSE = "logout"
GENERIC_FAILURE = "Wrong username or password."  # the same words for every failure
THROTTLED = "Too many failed sign-in attempts. Wait a while and try again."
log = logging.getLogger(__name__)


# --- pages -------------------------------------------------------------------------------------


@functools.cache
def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, auto_reload=False)


_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


def origin_of(uri: str) -> str | None:
    """The origin of a URL, or None. Strict, because it goes into a CSP header (and `next` on
    the login page is attacker-controlled: no `;`, space or quote may ride along)."""
    parts = urlsplit(uri)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin if _ORIGIN.fullmatch(origin) else None


def page(template: str, status: int = 200, *, form_targets: Iterable[str] = (), **context: Any) -> HTMLResponse:
    """Render an HTML page with its own CSP (no script; one nonce'd <style>).

    `form_targets`: origins a form on this page may end up at. CSP form-action also governs the
    redirects that follow a form submission, so a page whose form leads back to an app lists the
    app's origin.
    """
    nonce = secrets.token_urlsafe(16)
    html = _templates().get_template(template).render(nonce=nonce, **context)
    targets = " ".join(["'self'", *sorted({t for t in form_targets if t})])
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; form-action {targets}; frame-ancestors 'none'; base-uri 'none'"
    )
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Content-Security-Policy": csp,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
        },
    )


def error_page(title: str, message: str, status: int = 400, *, not_redirected: bool = False) -> HTMLResponse:
    return page("error.html", status, title=title, message=message, not_redirected=not_redirected)


def csrf_cookie(request: Request) -> str:
    """The browser's CSRF cookie value if well-formed, else a new one (the page sets it)."""
    return CsrfSigner.cookie_value(request.cookies.get(CSRF_COOKIE))


async def current_user(request: Request, runtime: Runtime) -> tuple[User, LoginSession] | None:
    """The signed-in user of this request (a live session of an active user), or None."""
    now = int(runtime.clock())
    async with runtime.sessions() as session:
        login = await sessions.load(session, request.cookies.get(SESSION_COOKIE), now)
        if login is None:
            return None
        user = await users.by_username(session, login.username)
    return (user, login) if user is not None else None


# --- throttle ----------------------------------------------------------------------------------


def _throttle_keys(username: str, ip: str) -> tuple[str, str]:
    # Hashed: bounded length, and a password typed into the username field is not stored in clear.
    return (
        "u:" + hashlib.sha256(username.encode()).hexdigest(),
        "ip:" + hashlib.sha256(ip.encode()).hexdigest(),
    )


async def throttled(session: AsyncSession, settings: AuthSettings, username: str, ip: str, now: int) -> int:
    """Seconds to wait if the username or the IP has reached its limit of failures, else 0."""
    user_key, ip_key = _throttle_keys(username, ip)
    window = settings.login_failure_window_seconds
    rows = (
        await session.execute(
            select(LoginThrottleRow).where(
                LoginThrottleRow.key.in_([user_key, ip_key]), LoginThrottleRow.window_start > now - window
            )
        )
    ).scalars()
    limits = {user_key: settings.login_max_failures_per_user, ip_key: settings.login_max_failures_per_ip}
    wait = 0
    for row in rows:
        if row.failures >= limits[row.key]:
            wait = max(wait, row.window_start + window - now)
    return wait


async def record_failure(session: AsyncSession, settings: AuthSettings, username: str, ip: str, now: int) -> None:
    """Count one failure for the username and for the IP (atomic upsert; a stale window restarts)."""
    window = settings.login_failure_window_seconds
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stale = LoginThrottleRow.window_start <= now - window
    for key in _throttle_keys(username, ip):
        statement = insert(LoginThrottleRow).values(key=key, window_start=now, failures=1)
        statement = statement.on_conflict_do_update(
            index_elements=[LoginThrottleRow.key],
            set_={
                "failures": case((stale, 1), else_=LoginThrottleRow.failures + 1),
                "window_start": case((stale, now), else_=LoginThrottleRow.window_start),
            },
        )
        await session.execute(statement)
    await session.execute(delete(LoginThrottleRow).where(LoginThrottleRow.window_start <= now - 2 * window))


async def clear_user_failures(session: AsyncSession, username: str) -> None:
    user_key, _ = _throttle_keys(username, "")
    await session.execute(delete(LoginThrottleRow).where(LoginThrottleRow.key == user_key))


@functools.cache
def _dummy_hash() -> str:
    # Verified against when the user does not exist, so that case costs the same argon2 work.
    return hash_password(secrets.token_urlsafe(16))


async def check_password(session: AsyncSession, username: str, password: str) -> User | None:
    row = await session.get(UserRow, username) if 0 < len(username) <= 128 else None
    stored = row.password_hash if row is not None and row.active else await asyncio.to_thread(_dummy_hash)
    ok = await asyncio.to_thread(verify_password, stored, password[:4096])
    if not ok or row is None or not row.active:
        return None
    return await users.by_username(session, username)


# --- routes ------------------------------------------------------------------------------------


def safe_next(value: object) -> str:
    """Only our own authorize endpoint is a place to go back to after login (no open redirect)."""
    if isinstance(value, str) and value.startswith("/authorize?") and "\\" not in value and len(value) < 8192:
        return value
    return ""


def _next_targets(next_url: str) -> list[str]:
    if not next_url:
        return []
    redirect = parse_qs(urlsplit(next_url).query).get("redirect_uri", [""])[0]
    origin = origin_of(redirect)
    return [origin] if origin else []


router = APIRouter()


def login_page(
    request: Request, csrf: CsrfSigner, next_url: str, *, error: str = "", status: int = 200, username: str = ""
) -> HTMLResponse:
    cookie = csrf_cookie(request)
    response = page(
        "login.html",
        status,
        form_targets=_next_targets(next_url),
        title="Sign in",
        csrf=csrf.token(cookie, LOGIN_PURPOSE),
        next=next_url,
        error=error,
        username=username,
    )
    sessions.set_csrf_cookie(response, cookie)
    return response


@router.get("/login")
async def login_form(request: Request, state: StateDep) -> Response:
    next_url = safe_next(request.query_params.get("next"))
    signed_in = await current_user(request, state.runtime)
    if signed_in is not None:
        if next_url:
            return RedirectResponse(next_url, status_code=303)
        user, _ = signed_in
        cookie = csrf_cookie(request)
        response = page(
            "logged_in.html",
            title="Signed in",
            display=user.display,
            fhir_user=user.fhir_user,
            csrf=state.csrf.token(cookie, LOGOUT_PURPOSE),
        )
        sessions.set_csrf_cookie(response, cookie)
        return response
    return login_page(request, state.csrf, next_url)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


async def start_session(runtime: Runtime, settings: AuthSettings, user: User, old_cookie: str | None, now: int) -> str:
    """A new login session (never the old id again: no session fixation); returns its cookie value."""
    async with runtime.sessions() as session, session.begin():
        await clear_user_failures(session, user.username)
        await sessions.end(session, old_cookie)
        await sessions.purge(session, now)
        value, _ = await sessions.create(session, user.username, now, settings.session_lifetime_seconds)
    return value


@router.post("/login")
async def login(request: Request, state: StateDep) -> Response:
    form, runtime, settings = await request.form(), state.runtime, state.settings
    next_url = safe_next(form.get("next"))
    if not state.csrf.check(request.cookies.get(CSRF_COOKIE), LOGIN_PURPOSE, form.get("csrf")):
        return error_page("Sign-in refused", "The form has expired. Go back and try again.", 403)
    username, password = _text(form.get("username")), _text(form.get("password"))
    ip = request.client.host if request.client else "unknown"
    now = int(runtime.clock())
    async with runtime.sessions() as session:
        wait = await throttled(session, settings, username, ip, now)
    if wait:
        log.info("login throttled")
        response = login_page(request, state.csrf, next_url, error=THROTTLED, status=429)
        response.headers["Retry-After"] = str(max(wait, 1))
        return response
    async with runtime.sessions() as session:
        user = await check_password(session, username, password)
    if user is None:
        async with runtime.sessions() as session, session.begin():
            await record_failure(session, settings, username, ip, now)
        log.info("login failed")
        return login_page(request, state.csrf, next_url, error=GENERIC_FAILURE, status=401, username=username[:128])
    value = await start_session(runtime, settings, user, request.cookies.get(SESSION_COOKIE), now)
    signed_in = RedirectResponse(next_url or "/login", status_code=303)
    sessions.set_session_cookie(signed_in, value, settings.session_lifetime_seconds)
    return signed_in


@router.post("/logout")
async def logout(request: Request, state: StateDep) -> Response:
    form = await request.form()
    if not state.csrf.check(request.cookies.get(CSRF_COOKIE), LOGOUT_PURPOSE, form.get("csrf")):
        return error_page("Sign-out refused", "The form has expired. Go back and try again.", 403)
    async with state.runtime.sessions() as session, session.begin():
        await sessions.end(session, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    sessions.clear_session_cookie(response)
    return response
