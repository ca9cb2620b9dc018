"""Example SMART app (EHR launch, SMART App Launch 2.2), a public client with PKCE S256, on Python `fhirclient`.

Run alone with `uvicorn --factory examples.smart_app.app:create_app` (settings MOCKEHR_SMART_*).

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

fhirclient is synchronous (requests): every step that touches the network runs in a worker
thread, so the event loop never waits on it. Of mockehr the app uses only `common` (JWT
verification, security headers, settings), as any third-party app would use its own libraries.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import requests
from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from requests.adapters import BaseAdapter

from common.clock import Clock, system_clock
from common.errors import TokenInvalidError
from common.health import Check, health_router
from common.jose import import_public_jwks
from common.jwt_verify import JwtRules, fixed_keys, verify
from common.keys import ALGORITHMS
from common.logs import configure_logging
from common.middleware import SecurityHeadersMiddleware, limit_bodies
from common.settings import load_settings
from examples.smart_app.launches import Pending, PendingLaunches
from examples.smart_app.settings import SmartAppSettings
from examples.smart_app.smart import (
    LaunchError,
    MedicationView,
    begin,
    discover,
    fetch_jwks,
    read_medications,
    read_patient,
    redeem,
)
from examples.smart_app.transport import smart_session

LAUNCH_COOKIE = "__Host-smart-example-launch"
# The EHR's own stylesheet, served by this app as is (SMART apps usually match their EHR's look;
# one file, so the two never drift apart).
EHR_STYLESHEET = Path(__file__).resolve().parents[2] / "ehr" / "ui" / "static" / "ehr.css"
log = logging.getLogger(__name__)
T = TypeVar("T")


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


def create_app(
    settings: SmartAppSettings | None = None,
    *,
    clock: Clock = system_clock,
    adapter: BaseAdapter | None = None,  # tests: the FHIR and authorization servers, in place of the network
) -> FastAPI:
    settings = settings or load_settings(SmartAppSettings)
    launches = PendingLaunches(ttl=settings.pending_seconds, clock=clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.service_name)
        # fhirclient logs the token response (id_token included) at DEBUG and warns that it
        # ignores every id_token (this app verifies it): only its errors belong in the logs.
        logging.getLogger("fhirclient").setLevel(logging.ERROR)
        yield

    # No redirect_slashes: a redirect would be built from the Host header.
    app = FastAPI(
        title="mockehr example SMART app",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    # The app takes no bodies at all; whatever is sent is bounded before anything reads it.
    limit_bodies(app, max_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)

    async def blocking(work: Callable[[requests.Session], T]) -> T:
        """Run fhirclient's blocking work in a worker thread, on a fresh session closed afterwards
        (a requests Session is not meant to be shared between threads)."""

        def run() -> T:
            with smart_session(
                ca_file=settings.ca_path, timeout=settings.http_timeout_seconds, adapter=adapter
            ) as session:
                return work(session)

        return await to_thread.run_sync(run)

    @app.get("/static/ehr.css")
    async def stylesheet() -> Response:
        return Response(
            EHR_STYLESHEET.read_bytes(),
            media_type="text/css",
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    @app.get("/launch")
    async def launch(request: Request) -> Response:
        iss = request.query_params.get("iss", "")
        value = request.query_params.get("launch", "")
        # SMART App Launch 2.2 §2.1.5 "EHR Launch": the app checks iss against an allow list before
        # fetching anything from it (otherwise the attacker picks the server the app trusts).
        if iss.rstrip("/") != settings.fhir_base_url.rstrip("/"):
            return page(400, title="Launch refused", error="This app is not set up for that FHIR server (iss).")
        if not value or len(value) > 512:
            return page(400, title="Launch refused", error="The EHR did not send a launch value.")
        nonce = secrets.token_urlsafe(24)
        try:
            url, client_state, found = await blocking(lambda session: begin(settings, session, value, nonce))
        except LaunchError as exc:
            return page(502, title="Launch failed", error=str(exc))
        state = client_state["server"]["auth"]["auth_state"]
        key = launches.add(Pending(client_state, state, found.issuer, found.jwks_uri, nonce, clock()))
        response = RedirectResponse(url, status_code=302)
        # Binds the launch to this browser: an answer arriving in another browser finds no launch.
        # Lax, not Strict: the answer is a top-level navigation from the authorization server.
        response.set_cookie(
            LAUNCH_COOKIE,
            key,
            max_age=settings.pending_seconds,
            path="/",
            secure=True,
            httponly=True,
            samesite="lax",
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/callback")
    async def callback(request: Request) -> Response:
        started = launches.take(request.cookies.get(LAUNCH_COOKIE, ""))
        state = request.query_params.get("state", "")
        if started is None or not secrets.compare_digest(state.encode(), started.state.encode()):
            response: Response = page(
                400, title="Launch refused", error="This answer does not belong to a launch of this browser."
            )
        else:
            try:
                response = page(**await finish(request, started))
            except LaunchError as exc:
                response = page(400, title="Launch failed", error=str(exc))
        response.delete_cookie(LAUNCH_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return response

    async def finish(request: Request, started: Pending) -> dict[str, Any]:
        params = request.query_params
        if "error" in params:  # RFC 6749 §4.1.2.1
            raise LaunchError(f"The authorization server answered: {params['error'][:64]}")
        if params.get("iss") != started.issuer:  # RFC 9207 mix-up defence, before the code is sent anywhere
            raise LaunchError("The answer came from another authorization server (iss).")
        # fhirclient reads code and state from this URL: the configured redirect URI, never one
        # built from the Host header.
        url = f"{settings.redirect_uri}?{request.url.query}"
        try:
            client = await blocking(lambda session: redeem(settings, session, started.client_state, url))
        except LaunchError as exc:
            log.warning("code not redeemed: %s", type(exc.__cause__).__name__ if exc.__cause__ else "no token")
            raise
        context: Mapping[str, Any] = client.launch_context
        claims = await check_id_token(_text(context.get("id_token")), started)
        patient_id = context.get("patient")
        if not isinstance(patient_id, str):
            raise LaunchError("The launch carried no patient.")
        try:
            patient = await blocking(lambda session: read_patient(client, session, patient_id))
        except LaunchError as exc:
            log.warning("patient not read: %s", type(exc.__cause__).__name__ if exc.__cause__ else "bad id")
            raise
        medications: list[MedicationView] = []
        medications_error = ""
        try:
            medications = await blocking(lambda session: read_medications(client, session, patient_id))
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

    async def check_id_token(id_token: str, started: Pending) -> dict[str, Any]:
        """OpenID Connect Core §3.1.3.7; the user (fhirUser) is taken from the verified token only."""
        jwks = await blocking(lambda session: fetch_jwks(session, started.jwks_uri))
        rules = JwtRules(
            algorithms=ALGORITHMS,
            typ="JWT",
            issuer=started.issuer,
            audience=settings.client_id,
            clock=clock,
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

    async def smart_configuration_readable() -> None:
        await blocking(lambda session: discover(session, settings.fhir_base_url.rstrip("/")))

    def checks() -> Mapping[str, Check]:
        return {"smart_configuration": smart_configuration_readable}

    app.include_router(health_router(checks))
    return app
