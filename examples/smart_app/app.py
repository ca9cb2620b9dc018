"""Example SMART app (EHR launch, SMART App Launch 2.2), a public client with PKCE S256.

Run alone with `uvicorn --factory examples.smart_app.app:create_app` (settings MOCKEHR_SMART_*).

    GET /launch?iss=<FHIR base>&launch=<opaque>     (opened by the EHR)
      → iss must be the configured FHIR server (allow list), its smart-configuration is read,
        a state, a PKCE verifier and a nonce are kept for this browser (cookie-bound), and the
        browser goes to the authorization endpoint with `launch`, the `launch` scope and aud=iss.
    GET /callback?code&state&iss                    (back from the authorization server)
      → state checked against this browser's cookie, `iss` against the server it was sent to
        (RFC 9207), code redeemed with the verifier, id_token verified (signature, iss, aud,
        nonce), the patient read with the access token; the page shows the patient, the user
        and the launch context the token response carried (appContext, fhirContext, encounter).

Built on authlib's OAuth 2.0 primitives (authorization URL, S256 challenge, response parsing)
and httpx for the calls; only the `common` package of mockehr (HTTP client with verified TLS,
JWKS cache, JWT verification), as any third-party app would use its own libraries.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc6749.parameters import parse_authorization_code_response, prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader

from common.clock import Clock, system_clock
from common.errors import TokenInvalidError
from common.health import Check, health_router
from common.http import make_http_client
from common.jose import unverified_header, verify_jwt
from common.jwks import JwksCache
from common.logs import configure_logging
from common.middleware import SecurityHeadersMiddleware
from common.settings import load_settings
from examples.smart_app.settings import SmartAppSettings

STATE_COOKIE = "__Host-smart-example-state"
ID_TOKEN_ALGORITHMS = ("ES384", "RS384", "ES256")
MAX_PENDING = 1000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoints:
    issuer: str
    authorize: str
    token: str
    jwks_uri: str


@dataclass(frozen=True)
class Pending:
    """A launch on its way through the authorization server (kept until /callback, once)."""

    fhir_base: str
    endpoints: Endpoints
    verifier: str
    nonce: str
    created: float


class LaunchError(Exception):
    """Shown on the page (never redirected anywhere)."""


@functools.cache
def _templates() -> Environment:
    return Environment(
        loader=FileSystemLoader(Path(__file__).with_name("templates")), autoescape=True, auto_reload=False
    )


def page(status: int = 200, **context: Any) -> HTMLResponse:
    """The app's one page: no script at all, one nonce'd style, never framed, no referrer."""
    nonce = secrets.token_urlsafe(16)
    html = _templates().get_template("page.html").render(nonce=nonce, **context)
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{nonce}'; frame-ancestors 'none'; "
                "base-uri 'none'; form-action 'none'"
            ),
            "Cache-Control": "no-store",
        },
    )


def _patient_name(patient: Mapping[str, Any]) -> str:
    names = patient.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        name = names[0]
        if isinstance(name.get("text"), str):
            return str(name["text"])
        given = " ".join(g for g in name.get("given", []) if isinstance(g, str))
        family = name.get("family") if isinstance(name.get("family"), str) else ""
        if (given + str(family)).strip():
            return f"{given} {family}".strip()
    return f"Patient/{patient.get('id')}"


def create_app(
    settings: SmartAppSettings | None = None,
    *,
    clock: Clock = system_clock,
    transport: httpx.AsyncBaseTransport | None = None,  # tests: the FHIR and authorization servers
) -> FastAPI:
    settings = settings or load_settings(SmartAppSettings)
    pending: dict[str, Pending] = {}
    jwks: dict[str, JwksCache] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.service_name)
        client = (
            httpx.AsyncClient(transport=transport, follow_redirects=False)
            if transport is not None
            else make_http_client(ca_file=settings.ca_path, timeout=settings.http_timeout_seconds)
        )
        async with client as http:
            app.state.http = http
            yield

    app = FastAPI(title="mockehr example SMART app", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeadersMiddleware, hsts=settings.tls)

    def http() -> httpx.AsyncClient:
        client: httpx.AsyncClient = app.state.http
        return client

    async def discover(fhir_base: str) -> Endpoints:
        """SMART App Launch 2.2 §2.2 "Discovery": {iss}/.well-known/smart-configuration."""
        try:
            response = await http().get(f"{fhir_base}/.well-known/smart-configuration")
            config = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            config = None
        if not isinstance(config, dict):
            raise LaunchError("The FHIR server's SMART configuration could not be read.")
        values = {k: config.get(k) for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")}
        if not all(isinstance(v, str) and v.startswith("https://") for v in values.values()):
            raise LaunchError("The FHIR server's SMART configuration lacks https endpoints.")
        if "S256" not in (config.get("code_challenge_methods_supported") or []):
            raise LaunchError("The authorization server does not offer PKCE S256.")
        return Endpoints(
            str(values["issuer"]),
            str(values["authorization_endpoint"]),
            str(values["token_endpoint"]),
            str(values["jwks_uri"]),
        )

    def forget_stale() -> None:
        now = clock()
        for key in [k for k, p in pending.items() if now - p.created > settings.pending_seconds]:
            del pending[key]
        while len(pending) >= MAX_PENDING:  # bounded: the oldest launch goes first
            del pending[next(iter(pending))]

    async def check_id_token(id_token: str, endpoints: Endpoints, nonce: str) -> dict[str, Any]:
        cache = jwks.setdefault(endpoints.jwks_uri, JwksCache(http(), endpoints.jwks_uri, clock=clock))
        try:
            keys = await cache.key_set(str(unverified_header(id_token).get("kid") or ""))
            verified = verify_jwt(
                id_token,
                keys,
                algorithms=ID_TOKEN_ALGORITHMS,
                typ="JWT",
                issuer=endpoints.issuer,
                audience=settings.client_id,
                clock=clock,
                require=("exp", "iat"),
            )
        except TokenInvalidError as exc:
            log.warning("id_token refused: %s", exc)
            raise LaunchError("The identity token could not be verified.") from None
        if verified.claims.get("nonce") != nonce:
            raise LaunchError("The identity token does not answer this launch (nonce).")
        return verified.claims

    @app.get("/launch")
    async def launch(request: Request) -> Response:
        iss = request.query_params.get("iss", "")
        value = request.query_params.get("launch", "")
        if iss.rstrip("/") != settings.fhir_base_url.rstrip("/"):
            return page(400, title="Launch refused", error="This app is not set up for that FHIR server (iss).")
        if not value or len(value) > 512:
            return page(400, title="Launch refused", error="The EHR did not send a launch value.")
        try:
            endpoints = await discover(settings.fhir_base_url.rstrip("/"))
        except LaunchError as exc:
            return page(502, title="Launch failed", error=str(exc))
        forget_stale()
        state, verifier, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(48), secrets.token_urlsafe(24)
        pending[state] = Pending(settings.fhir_base_url.rstrip("/"), endpoints, verifier, nonce, clock())
        url = prepare_grant_uri(
            endpoints.authorize,
            settings.client_id,
            "code",
            redirect_uri=settings.redirect_uri,
            scope=settings.scope,
            state=state,
            aud=iss,
            launch=value,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        response = RedirectResponse(url, status_code=302)
        # Binds the state to this browser: a callback carrying someone else's state is refused.
        response.set_cookie(
            STATE_COOKIE,
            state,
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
        state = request.query_params.get("state", "")
        cookie = request.cookies.get(STATE_COOKIE, "")
        started = pending.pop(state, None) if state and secrets.compare_digest(state, cookie) else None
        if started is None:
            return page(400, title="Launch refused", error="This answer does not belong to a launch of this browser.")
        try:
            result = await finish(str(request.url), state, started)
        except LaunchError as exc:
            response: Response = page(400, title="Launch failed", error=str(exc))
        else:
            response = page(**result)
        response.delete_cookie(STATE_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return response

    async def finish(url: str, state: str, started: Pending) -> dict[str, Any]:
        try:
            params = parse_authorization_code_response(url, state=state)
        except OAuth2Error as exc:
            raise LaunchError(f"The authorization server answered: {exc.error}") from None
        if params.get("iss") != started.endpoints.issuer:  # RFC 9207 mix-up defence
            raise LaunchError("The answer came from another authorization server (iss).")
        try:
            token_response = await http().post(
                started.endpoints.token,
                data={
                    "grant_type": "authorization_code",
                    "code": params["code"],
                    "redirect_uri": settings.redirect_uri,
                    "client_id": settings.client_id,
                    "code_verifier": started.verifier,
                },
                headers={"Accept": "application/json"},
            )
            token = token_response.json() if token_response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            token = None
        if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
            raise LaunchError("The authorization code could not be redeemed.")
        patient_id = token.get("patient")
        if not isinstance(patient_id, str):
            raise LaunchError("The launch carried no patient.")
        claims = await check_id_token(str(token.get("id_token") or ""), started.endpoints, started.nonce)
        try:
            read = await http().get(
                f"{started.fhir_base}/Patient/{patient_id}",
                headers={"Authorization": f"Bearer {token['access_token']}", "Accept": "application/fhir+json"},
            )
            patient = read.json() if read.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            patient = None
        if not isinstance(patient, dict):
            raise LaunchError("The patient could not be read with the token received.")
        app_context = token.get("appContext")
        return {
            "title": "Launched from the EHR",
            "patient_name": _patient_name(patient),
            "patient_id": patient_id,
            "birth_date": patient.get("birthDate") if isinstance(patient.get("birthDate"), str) else "",
            "encounter": token.get("encounter") if isinstance(token.get("encounter"), str) else "",
            "fhir_user": claims.get("fhirUser") if isinstance(claims.get("fhirUser"), str) else "",
            "scope": token.get("scope") if isinstance(token.get("scope"), str) else "",
            "app_context": app_context if isinstance(app_context, str) else None,
            "fhir_context": json.dumps(token.get("fhirContext") or [], indent=2),
        }

    async def authserver_reachable() -> None:
        await discover(settings.fhir_base_url.rstrip("/"))

    def checks() -> Mapping[str, Check]:
        return {"smart_configuration": authserver_reachable}

    app.include_router(health_router(checks))
    return app
