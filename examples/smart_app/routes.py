"""The example SMART app's routes: the EHR launch, the answer from the authorization server, and
the stylesheet (SMART App Launch 2.2 "EHR Launch").

    GET /launch?iss=<FHIR base>&launch=<opaque>     (opened by the EHR)
      → iss must be the configured FHIR server (allow list), its smart-configuration is read,
        fhirclient builds the authorization request (state, PKCE S256, aud=iss, launch) and the
        app adds an OpenID Connect nonce; fhirclient's state stays in memory here, the browser
        gets only an opaque key in a cookie, and goes to the authorization endpoint.
    GET /callback?code&state&iss                    (back from the authorization server)
      → the cookie names the launch (once), the state must be the one sent, `iss` the server it
        was sent to (RFC 9207); fhirclient redeems the code with the verifier; the id_token is
        verified (signature, iss, aud, exp, nonce) before the patient is read with the access
        token; the page shows the patient, the user and the launch context the token response
        carried (appContext, fhirContext, encounter).
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from starlette.datastructures import QueryParams

from common.errors import TokenInvalidError
from common.jose import import_public_jwks
from common.jwt_verify import JwtRules, fixed_keys, verify
from common.keys import ALGORITHMS
from examples.smart_app.launches import Pending
from examples.smart_app.smart import (
    LaunchError,
    MedicationView,
    begin,
    fetch_jwks,
    read_medications,
    read_patient,
    redeem,
)
from examples.smart_app.state import SmartState, smart_state

LAUNCH_COOKIE = "__Host-smart-example-launch"
# The EHR's own stylesheet, served by this app as is (SMART apps usually match their EHR's look;
# one file, so the two never drift apart).
EHR_STYLESHEET = Path(__file__).resolve().parents[2] / "ehr" / "ui" / "static" / "ehr.css"
log = logging.getLogger(__name__)


@functools.cache
def _templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True, auto_reload=False
    )


def page(status: int = 200, **context: Any) -> HTMLResponse:
    """The app's one page: no script at all, its one stylesheet, never framed, no referrer."""
    html = _templates().get_template("page.html").render(**context)
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
            ),
            "Cache-Control": "no-store",
        },
    )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def get_state(request: Request) -> SmartState:
    return smart_state(request.app)


StateDep = Annotated[SmartState, Depends(get_state)]


# --- the launch ----------------------------------------------------------------------------------


async def start(state: SmartState, iss: str, value: str) -> Response:
    """The redirect to the authorization endpoint, the pending launch bound to this browser."""
    settings = state.settings
    # SMART App Launch 2.2 §2.1.5 "EHR Launch": the app checks iss against an allow list before
    # fetching anything from it (otherwise the attacker picks the server the app trusts).
    if iss.rstrip("/") != settings.fhir_base_url.rstrip("/"):
        return page(400, title="Launch refused", error="This app is not set up for that FHIR server (iss).")
    if not value or len(value) > 512:
        return page(400, title="Launch refused", error="The EHR did not send a launch value.")
    nonce = secrets.token_urlsafe(24)
    try:
        url, client_state, found = await state.blocking(lambda session: begin(settings, session, value, nonce))
    except LaunchError as exc:
        return page(502, title="Launch failed", error=str(exc))
    auth_state = client_state["server"]["auth"]["auth_state"]
    key = state.launches.add(Pending(client_state, auth_state, found.issuer, found.jwks_uri, nonce, state.clock()))
    response = RedirectResponse(url, status_code=302)
    # Binds the launch to this browser: an answer arriving in another browser finds no launch.
    # Lax, not Strict: the answer is a top-level navigation from the authorization server.
    response.set_cookie(
        LAUNCH_COOKIE, key, max_age=settings.pending_seconds, path="/", secure=True, httponly=True, samesite="lax"
    )
    response.headers["Cache-Control"] = "no-store"
    return response


# --- the answer ----------------------------------------------------------------------------------


async def check_id_token(state: SmartState, id_token: str, started: Pending) -> dict[str, Any]:
    """OpenID Connect Core §3.1.3.7; the user (fhirUser) is taken from the verified token only."""
    jwks = await state.blocking(lambda session: fetch_jwks(session, started.jwks_uri))
    rules = JwtRules(
        algorithms=ALGORITHMS,
        typ="JWT",
        issuer=started.issuer,
        audience=state.settings.client_id,
        clock=state.clock,
        require=("exp", "iat"),
    )
    try:
        verified = await verify(id_token, fixed_keys(import_public_jwks(jwks)), rules)
    except TokenInvalidError as exc:
        log.warning("id_token refused: %s", exc)
        raise LaunchError("The identity token could not be verified.") from None
    if verified.claims.get("nonce") != started.nonce:
        raise LaunchError("The identity token does not answer this launch (nonce).")
    return verified.claims


async def finish(state: SmartState, query: str, started: Pending) -> dict[str, Any]:
    """The page's context: the code redeemed, the id_token verified, the patient read."""
    params = QueryParams(query)
    if "error" in params:  # RFC 6749 §4.1.2.1
        raise LaunchError(f"The authorization server answered: {params['error'][:64]}")
    if params.get("iss") != started.issuer:  # RFC 9207 mix-up defence, before the code is sent anywhere
        raise LaunchError("The answer came from another authorization server (iss).")
    # fhirclient reads code and state from this URL: the configured redirect URI, never one
    # built from the Host header.
    url = f"{state.settings.redirect_uri}?{query}"
    try:
        client = await state.blocking(lambda session: redeem(state.settings, session, started.client_state, url))
    except LaunchError as exc:
        log.warning("code not redeemed: %s", type(exc.__cause__).__name__ if exc.__cause__ else "no token")
        raise
    context: Mapping[str, Any] = client.launch_context
    claims = await check_id_token(state, _text(context.get("id_token")), started)
    patient_id = context.get("patient")
    if not isinstance(patient_id, str):
        raise LaunchError("The launch carried no patient.")
    try:
        patient = await state.blocking(lambda session: read_patient(client, session, patient_id))
    except LaunchError as exc:
        log.warning("patient not read: %s", type(exc.__cause__).__name__ if exc.__cause__ else "bad id")
        raise
    medications: list[MedicationView] = []
    medications_error = ""
    try:
        medications = await state.blocking(lambda session: read_medications(client, session, patient_id))
    except LaunchError as exc:  # the patient is still shown; the page says what is missing
        medications_error = str(exc)
    app_context = context.get("appContext")
    return {
        "medications": medications,
        "medications_error": medications_error,
        "title": "Launched from the EHR",
        "patient_name": patient.name,
        "patient_id": patient.id,
        "birth_date": patient.birth_date,
        "encounter": _text(context.get("encounter")),
        "fhir_user": _text(claims.get("fhirUser")),
        "scope": _text(context.get("scope")),
        "app_context": app_context if isinstance(app_context, str) else None,
        "fhir_context": json.dumps(context.get("fhirContext") or [], indent=2),
    }


# --- the routes ----------------------------------------------------------------------------------

router = APIRouter()


@router.get("/static/ehr.css")
async def stylesheet() -> Response:
    return Response(
        EHR_STYLESHEET.read_bytes(),
        media_type="text/css",
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/launch")
async def launch(request: Request, state: StateDep) -> Response:
    return await start(state, request.query_params.get("iss", ""), request.query_params.get("launch", ""))


@router.get("/callback")
async def callback(request: Request, state: StateDep) -> Response:
    started = state.launches.take(request.cookies.get(LAUNCH_COOKIE, ""))
    given = request.query_params.get("state", "")
    if started is None or not secrets.compare_digest(given.encode(), started.state.encode()):
        response: Response = page(
            400, title="Launch refused", error="This answer does not belong to a launch of this browser."
        )
    else:
        try:
            response = page(**await finish(state, request.url.query, started))
        except LaunchError as exc:
            response = page(400, title="Launch failed", error=str(exc))
    response.delete_cookie(LAUNCH_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response
