"""Signing in and out of the EHR UI through the authorization server.

GET /login          → a new state, PKCE verifier and nonce in an encrypted, short-lived cookie;
                      302 to the authserver's /authorize (which shows its sign-in page).
GET /oauth/callback → state checked against the cookie (login CSRF, RFC 9700 §4.7), `iss`
                      checked (RFC 9207), code redeemed with private_key_jwt, id_token verified;
                      a new session (fresh CSRF secret) replaces whatever the browser had.
POST /logout        → CSRF-checked; the refresh token is revoked (which revokes the grant's access
                      tokens too), the cookie cleared.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import QueryParams

from ehr.ui.oauth import OAuthFailure, Tokens
from ehr.ui.session import CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE, LoginState, Session, csrf_ok, login_from, new_csrf
from ehr.ui.state import UiState, ui_state
from ehr.ui.web import render, safe_next

_PRACTITIONER = re.compile(r"Practitioner/[A-Za-z0-9\-.]{1,64}")


def _practitioner(fhir_user: object, fhir_base: str) -> str | None:
    """`Practitioner/<id>` from the id_token's fhirUser (an absolute URL on our FHIR server)."""
    if not isinstance(fhir_user, str):
        return None
    relative = fhir_user.removeprefix(fhir_base + "/")
    return relative if _PRACTITIONER.fullmatch(relative) else None


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


router = APIRouter()


@router.get("/")
async def home(request: Request) -> Response:
    if await ui_state(request).read(request) is not None:
        return _no_store(RedirectResponse("/patients", status_code=303))
    ui = ui_state(request)
    return render("signed_out.html", title="mockehr EHR", authserver_login=ui.config.authserver_url + "/login")


@router.get("/login")
async def login(request: Request) -> Response:
    ui = ui_state(request)
    login = LoginState(
        state=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(48),
        nonce=secrets.token_urlsafe(24),
        created_at=ui.now(),
        next_path=safe_next(request.query_params.get("next")),
    )
    response = RedirectResponse(ui.auth.authorize_url(login.state, login.verifier, login.nonce), status_code=302)
    ui.box.set(response, LOGIN_COOKIE, asdict(login), ui.config.login_seconds)
    return _no_store(response)


def _failed(message: str, status: int = 400) -> Response:
    return render("error.html", status, title="Sign-in failed", message=message)


def _answered_login(ui: UiState, login: LoginState | None, params: QueryParams) -> LoginState | Response:
    """The sign-in this answer of the authorization server belongs to, or why it is not one to
    redeem (login CSRF, RFC 9700 §4.7; mix-up, RFC 9207)."""
    state = params.get("state", "")
    if login is None or not state or not secrets.compare_digest(state.encode(), login.state.encode()):
        return _failed("This sign-in was not started here. Sign in again.")
    if params.get("iss") != ui.config.authserver_url:
        return _failed("The answer came from another server.")
    if "error" in params or not params.get("code"):
        return _failed("The authorization server did not sign you in.")
    return login


def new_session(user_ref: str, tokens: Tokens, now: int) -> Session:
    """A new session (fresh CSRF secret and id) for the signed-in practitioner."""
    return Session(
        user_ref=user_ref,
        display=str(tokens.id_claims.get("name") or tokens.id_claims.get("sub") or user_ref),
        access_token=tokens.access_token,
        access_expires_at=tokens.expires_at,
        refresh_token=tokens.refresh_token,
        csrf=new_csrf(),
        created_at=now,
        seen_at=now,
        sid=secrets.token_urlsafe(24),
    )


@router.get("/oauth/callback")
async def callback(request: Request) -> Response:
    ui = ui_state(request)
    started = login_from(
        ui.box.open(LOGIN_COOKIE, request.cookies.get(LOGIN_COOKIE)), ui.now(), ui.config.login_seconds
    )
    params = request.query_params
    login = _answered_login(ui, started, params)
    if isinstance(login, Response):
        return login
    try:
        tokens = await ui.auth.redeem(params["code"], login.verifier, login.nonce)
    except OAuthFailure as exc:
        return _failed(str(exc))
    user_ref = _practitioner(tokens.id_claims.get("fhirUser"), ui.config.fhir_base_url)
    if user_ref is None:
        if tokens.refresh_token:
            await ui.auth.revoke(tokens.refresh_token, "refresh_token")
        return render("error.html", 403, title="Sign-in refused", message="The EHR is for practitioners.")
    response = RedirectResponse(login.next_path, status_code=303)
    ui.write(response, new_session(user_ref, tokens, ui.now()))
    ui.box.clear(response, LOGIN_COOKIE)
    return _no_store(response)


@router.post("/logout")
async def logout(request: Request) -> Response:
    ui = ui_state(request)
    session = await ui.read(request)
    form = await request.form()
    if session is not None and (not csrf_ok(session, form.get(CSRF_FIELD)) or not ui.same_origin(request)):
        return render("error.html", 403, title="Sign-out refused", message="The form has expired. Reload the page.")
    if session is not None:
        await ui.sign_out(session)  # first: whatever the authorization server answers
        if session.refresh_token:
            await ui.auth.revoke(session.refresh_token, "refresh_token")
        await ui.auth.revoke(session.access_token, "access_token")
    response = RedirectResponse("/", status_code=303)
    ui.box.clear(response, SESSION_COOKIE)
    return _no_store(response)
