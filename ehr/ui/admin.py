"""Admin pages: CDS Services, OAuth clients, signing keys.

Who is an admin: a signed-in user who has entered the stack's admin token once (the one
`mockehr up` prints). The token is compared in constant time and never stored in the session;
the session only remembers that it was shown (until the session ends). Without it, the admin
pages offer the form and nothing else, and the EHR API refuses the admin routes.

- CDS Services: the page's script calls the EHR API (`/api/services`), which owns discovery,
  approvals and enabling.
- Clients: read from, registered at (SMART apps: /admin/clients/new) and disabled at, the
  authorization server's admin API (the EHR holds the admin token in its settings; the browser
  never sees it). A registration is validated by the admin API itself, its message shown in the
  form; a confidential app's secret is made here, sent once to the authserver (which keeps only
  its hash) and shown once, on the answer to the form post (no-store).
- Keys: the EHR's own signing keys: list, and rotate (the new key is published at once and
  signs after the publish-ahead delay; the old one stays published for the overlap).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from dataclasses import replace
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from common.keys import list_keys, rotate
from ehr.authserver_admin import AuthserverAdmin, RegistrationRefused
from ehr.deps import AuthserverAdminDep
from ehr.errors import Conflict, UpstreamFailed
from ehr.ui.oauth import OAuthFailure
from ehr.ui.pages import Page, with_session
from ehr.ui.session import CSRF_FIELD, Session, csrf_ok
from ehr.ui.state import UiState, ui_state
from ehr.ui.web import render

CLIENT_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Seconds the old key stays published: publish-ahead + the longest token lifetime + leeway (as
# `mockehr keys rotate`).
ROTATION_OVERLAP = 340
CLIENT_TYPES = {
    "public": "Public (no secret; PKCE)",
    "confidential-symmetric": "Confidential, with a client secret",
    "confidential-asymmetric": "Confidential asymmetric (private_key_jwt: JWKS URL or pasted JWKS)",
}
MAX_FIELD = 16384


def _app_body(form: FormData) -> tuple[dict[str, object], str | None] | str:
    """The admin API's client body from the form, and the secret to show (or what is wrong)."""
    values = {
        k: str(form.get(k) or "").strip()
        for k in ("client_id", "name", "redirect_uris", "launch_url", "client_type", "jwks_uri", "jwks", "scope")
    }
    if any(len(v) > MAX_FIELD for v in values.values()):
        return "A field is too long."
    kind = values["client_type"]
    body: dict[str, object] = {
        "client_id": values["client_id"],
        "name": values["name"],
        "scope": " ".join(values["scope"].split()),
        "redirect_uris": values["redirect_uris"].split(),
        "launch_url": values["launch_url"] or None,
    }
    secret = None
    if kind == "public":
        body["auth_method"] = "none"
    elif kind == "confidential-symmetric":
        secret = secrets.token_urlsafe(32)
        body.update(auth_method="client_secret_basic", client_secret=secret)
    elif kind == "confidential-asymmetric":
        body["auth_method"] = "private_key_jwt"
        if values["jwks_uri"]:
            body["jwks_uri"] = values["jwks_uri"]
        if values["jwks"]:
            try:
                body["jwks"] = json.loads(values["jwks"])
            except ValueError:
                return 'The JWKS is not JSON (paste a JWK Set: {"keys": [...]}).'
    else:
        return "Choose a client type."
    if not CLIENT_ID.fullmatch(values["client_id"]):
        return "client_id: 1–128 characters of A-Z a-z 0-9 . _ : -"
    return body, secret


def _forbidden() -> Response:
    return render("error.html", 403, title="Refused", message="The form has expired. Reload the page and try again.")


def _see_other(path: str) -> Response:
    response = RedirectResponse(path, status_code=303)
    response.headers["Cache-Control"] = "no-store"
    return response


# --- the pages, as plain functions of the UI state and the session ------------------------------


async def signin_page(ui: UiState, session: Session) -> Response:
    if session.is_admin:
        return _see_other("/admin/services")
    return render("admin_signin.html", title="Administration", session=session, error="")


async def elevate_page(presented: object, ui: UiState, session: Session) -> Response:
    """The session becomes an admin's when the admin token is shown (compared in constant time)."""
    expected = ui.runtime.settings.admin_secret()
    if (
        not isinstance(presented, str)
        or not presented
        or not expected
        or not hmac.compare_digest(presented.encode(), expected.encode())
    ):
        return render(
            "admin_signin.html", 403, title="Administration", session=session, error="That is not the admin token."
        )
    response = _see_other("/admin/services")
    ui.write(response, replace(session, is_admin=True))
    return response


async def services_page(ui: UiState, session: Session) -> Response:
    return render("admin_services.html", title="CDS Services", session=session)


async def clients_page(registry: AuthserverAdmin, ui: UiState, session: Session) -> Response:
    try:
        found = await registry.list_clients()
    except UpstreamFailed as exc:
        return render("error.html", 503, title="Try again", message=exc.message, session=session)
    return render("admin_clients.html", title="OAuth clients", session=session, clients=found)


async def new_client_page(ui: UiState, session: Session) -> Response:
    return _register_form(session, {}, "")


async def register_page(registry: AuthserverAdmin, form: FormData, ui: UiState, session: Session) -> Response:
    parsed = _app_body(form)
    if isinstance(parsed, str):
        return _register_form(session, form, parsed, 400)
    body, secret = parsed
    try:
        saved = await registry.register_smart_app(body)
    except (RegistrationRefused, Conflict) as exc:
        return _register_form(session, form, str(exc), 400)
    except UpstreamFailed as exc:
        return _register_form(session, form, exc.message, 503)
    return render("admin_client_registered.html", title="App registered", session=session, client=saved, secret=secret)


async def disable_page(client_id: str, ui: UiState, session: Session) -> Response:
    if not CLIENT_ID.fullmatch(client_id):
        return render("error.html", 404, title="No such client", message="No such client.", session=session)
    try:
        await ui.auth.disable_client(ui.runtime.settings.admin_secret(), client_id)
    except OAuthFailure as exc:
        return render("error.html", 503, title="Try again", message=str(exc), session=session)
    return _see_other("/admin/clients")


async def keys_page(ui: UiState, session: Session) -> Response:
    rows = [r for r in await list_keys(ui.runtime.sessions) if r.service == ui.runtime.settings.service_name]
    return render("admin_keys.html", title="Signing keys", session=session, keys=rows, overlap=ROTATION_OVERLAP)


async def rotate_page(ui: UiState, session: Session) -> Response:
    settings = ui.runtime.settings
    await rotate(
        ui.runtime.sessions, settings.service_name, settings.signing_alg, settings.kek(), ui.now(), ROTATION_OVERLAP
    )
    await ui.runtime.signing_keys.reload()
    return _see_other("/admin/keys")


# --- the routes ----------------------------------------------------------------------------------

router = APIRouter()


@router.get("/admin")
async def admin_home(request: Request) -> Response:
    return await with_session(request, signin_page)


@router.post("/admin/elevate")
async def elevate(request: Request) -> Response:
    form = await request.form()
    return await _admin_write(request, form, partial(elevate_page, form.get("admin_token")), admin_only=False)


@router.get("/admin/services")
async def services(request: Request) -> Response:
    return await _admin(request, services_page)


@router.get("/admin/clients")
async def clients(request: Request, registry: AuthserverAdminDep) -> Response:
    return await _admin(request, partial(clients_page, registry))


@router.get("/admin/clients/new")
async def new_client(request: Request) -> Response:
    return await _admin(request, new_client_page)


@router.post("/admin/clients/new")
async def register_client(request: Request, registry: AuthserverAdminDep) -> Response:
    form = await request.form()
    return await _admin_write(request, form, partial(register_page, registry, form))


@router.post("/admin/clients/{client_id}/disable")
async def disable_client(request: Request, client_id: str) -> Response:
    form = await request.form()
    return await _admin_write(request, form, partial(disable_page, client_id))


@router.get("/admin/keys")
async def keys(request: Request) -> Response:
    return await _admin(request, keys_page)


@router.post("/admin/keys/rotate")
async def rotate_key(request: Request) -> Response:
    form = await request.form()
    return await _admin_write(request, form, rotate_page)


def _register_form(session: Session, values: object, error: str, status: int = 200) -> Response:
    shown = (
        {
            k: str(values.get(k) or "")
            for k in ("client_id", "name", "redirect_uris", "launch_url", "client_type", "jwks_uri", "jwks", "scope")
        }
        if hasattr(values, "get")
        else {}
    )
    return render(
        "admin_client_new.html",
        status,
        title="Register a SMART app",
        session=session,
        values=shown,
        error=error,
        client_types=CLIENT_TYPES,
    )


async def _admin(request: Request, page: Page) -> Response:
    async def guarded(ui: UiState, session: Session) -> Response:
        if not session.is_admin:
            return _see_other("/admin")
        return await page(ui, session)

    return await with_session(request, guarded)


async def _admin_write(request: Request, form: FormData, page: Page, *, admin_only: bool = True) -> Response:
    """A form post: no session means sign in again (nothing is done), like a page view; a user
    not elevated goes to /admin (unless `admin_only` is off); a form without the session's CSRF
    token, or from another origin, is refused."""
    ui = ui_state(request)
    if await ui.read(request) is None:
        return _see_other("/login")

    async def guarded(ui: UiState, session: Session) -> Response:
        if admin_only and not session.is_admin:
            return _see_other("/admin")
        if not csrf_ok(session, form.get(CSRF_FIELD)) or not ui.same_origin(request):
            return _forbidden()
        return await page(ui, session)

    return await with_session(request, guarded)
