"""SMART app launches from the EHR: the chart's Apps menu, a card's smart link, and the record of
every launch (the Launches page).

SMART App Launch 2.2 "EHR Launch": the EHR registers the launch context at the authorization
server (authserver/launch.py, POST /launch) and opens the app's launch URL with `iss` and the
opaque `launch`. Only the launch URL of an active, registered SMART app launches anything (CDS
Hooks 2.0 Link: type smart "MUST" be a SMART app launch URL), read from the
authorization server's registry at each request, so a disabled app disappears from the menu and
stops launching at once.

Launch options (authserver/launch_options.py) make one launch misbehave the way app developers
test edge cases: a shorter access-token lifetime, or a simulated error. They go to the
authorization server with the launch, apply to that launch only, and are recorded here with it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ehr.authserver_admin import AuthserverAdmin, smart_apps
from ehr.deps import AuthserverAdminDep
from ehr.errors import UpstreamFailed
from ehr.models import SmartLaunchRow
from ehr.ui.chart import FHIR_ID, FhirReader, FhirUnauthorized, FhirUnavailable
from ehr.ui.oauth import OAuthFailure
from ehr.ui.pages import SIMULATED_ERRORS, with_session
from ehr.ui.session import Session
from ehr.ui.state import UiState, ui_state
from ehr.ui.web import render

MAX_APP_CONTEXT = 8192
MAX_FHIR_CONTEXT = 20
MIN_LIFETIME = 60  # as authserver/launch_options.py
LAUNCHES_SHOWN = 50
_REFERENCE = re.compile(r"[A-Z][A-Za-z]{0,63}/[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True)
class LaunchRequest:
    url: str
    patient: str
    encounter: str | None = None
    app_context: str | None = None
    fhir_context: list[str] = field(default_factory=list)  # relative references
    options: dict[str, Any] = field(default_factory=dict)  # as authserver POST /launch takes them


def parse_launch(body: object) -> LaunchRequest | str:
    """The body of POST /ui/launch, or what is wrong with it."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    url, patient, encounter, app_context = (body.get(k) for k in ("url", "patientId", "encounterId", "appContext"))
    if not isinstance(url, str) or not url.startswith("https://") or len(url) > 2048:
        return "url must be an https launch URL"
    if not isinstance(patient, str) or not FHIR_ID.fullmatch(patient):
        return "patientId must be a FHIR id"
    if encounter is not None and (not isinstance(encounter, str) or not FHIR_ID.fullmatch(encounter)):
        return "encounterId must be a FHIR id"
    if app_context is not None and (not isinstance(app_context, str) or len(app_context) > MAX_APP_CONTEXT):
        return f"appContext must be a string of at most {MAX_APP_CONTEXT} characters"
    references = body.get("fhirContext", [])
    if (
        not isinstance(references, list)
        or len(references) > MAX_FHIR_CONTEXT
        or not all(isinstance(r, str) and _REFERENCE.fullmatch(r) for r in references)
    ):
        return f"fhirContext must be a list of at most {MAX_FHIR_CONTEXT} relative references (Type/id)"
    if any(r.split("/", 1)[0] in ("Patient", "Encounter") for r in references):
        return "the patient and the encounter are the launch's own context, not fhirContext"
    options = _options(body.get("options"))
    if isinstance(options, str):
        return options
    return LaunchRequest(url, patient, encounter or None, app_context, list(dict.fromkeys(references)), options)


def _options(value: object) -> dict[str, Any] | str:
    if value is None:
        return {}
    if not isinstance(value, dict) or not value.keys() <= {"accessTokenLifetime", "simulateError"}:
        return "options is an object of accessTokenLifetime and simulateError"
    found: dict[str, Any] = {}
    lifetime, error = value.get("accessTokenLifetime"), value.get("simulateError")
    if lifetime is not None:
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < MIN_LIFETIME:
            return f"options.accessTokenLifetime is a number of seconds, at least {MIN_LIFETIME}"
        found["access_token_lifetime"] = lifetime
    if error is not None:
        if error not in SIMULATED_ERRORS:
            return "options.simulateError is one of " + ", ".join(SIMULATED_ERRORS)
        found["simulate_error"] = error
    return found


async def record_launch(
    sessions: async_sessionmaker[AsyncSession],
    session: Session,
    app: dict[str, Any],
    launch: LaunchRequest,
    now: int,
    refused: str | None = None,
) -> None:
    async with sessions() as db, db.begin():
        db.add(
            SmartLaunchRow(
                user_ref=session.user_ref,
                patient_id=launch.patient,
                encounter_id=launch.encounter,
                client_id=str(app.get("client_id")),
                app_name=str(app.get("name") or app.get("client_id"))[:255],
                launch_url=launch.url,
                fhir_context=json.dumps(launch.fhir_context) if launch.fhir_context else None,
                app_context=launch.app_context,
                options=json.dumps(launch.options, sort_keys=True),
                outcome="refused" if refused else "registered",
                detail=refused,
                created_at=now,
            )
        )


async def user_launches(sessions: async_sessionmaker[AsyncSession], user_ref: str) -> list[SmartLaunchRow]:
    """The user's latest launches (each clinician sees their own)."""
    query = (
        select(SmartLaunchRow)
        .where(SmartLaunchRow.user_ref == user_ref)
        .order_by(SmartLaunchRow.created_at.desc(), SmartLaunchRow.id.desc())
        .limit(LAUNCHES_SHOWN)
    )
    async with sessions() as db:
        return list((await db.execute(query)).scalars())


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status)


async def _refusal_by_fhir(reader: FhirReader, parsed: LaunchRequest) -> Response | None:
    """Why the user may not launch this (the patient, the encounter, a fhirContext resource), or None."""
    try:
        if not await reader.chart_visible(parsed.patient):
            return _error(404, "not_found", "no such patient")
        # The encounter and fhirContext go into the app's token response: they must be this
        # patient's encounter and resources this user can read.
        if parsed.encounter and not await reader.encounter_of(parsed.patient, parsed.encounter):
            return _error(400, "invalid_request", "that encounter is not this patient's")
        for reference in parsed.fhir_context:
            if not await reader.readable(reference):
                return _error(400, "invalid_request", f"{reference} is not a resource you can read")
    except FhirUnavailable:
        return _error(503, "unavailable", "the FHIR server could not answer")
    except FhirUnauthorized:
        return Response(status_code=401, headers={"WWW-Authenticate": "Session"})
    return None


def launch_context(app: dict[str, Any], session: Session, parsed: LaunchRequest) -> dict[str, Any]:
    """The body of the authserver's POST /launch."""
    context: dict[str, Any] = {"client_id": app["client_id"], "user": session.user_ref, "patient": parsed.patient}
    if parsed.encounter:
        context["encounter"] = parsed.encounter
    if parsed.app_context is not None:
        context["appContext"] = parsed.app_context
    if parsed.fhir_context:
        context["fhirContext"] = [{"reference": r} for r in parsed.fhir_context]
    if parsed.options:
        context["launch_options"] = parsed.options
    return context


def launch_url(url: str, iss: str, launch: str) -> str:
    """The app's launch URL with `iss` and `launch` added to its own query."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"iss": iss, "launch": launch})) if q)
    return urlunsplit(parts._replace(query=query))


async def start_launch(ui: UiState, registry: AuthserverAdmin, session: Session, parsed: LaunchRequest) -> Response:
    """Register the launch at the authserver for a registered app and a context the user may see;
    the answer names the URL to open."""
    try:
        apps = smart_apps(await registry.list_clients())
    except UpstreamFailed:
        return _error(503, "unavailable", "the app registry could not be read")
    app = next((a for a in apps if a.get("launch_url") == parsed.url), None)
    if app is None:
        return _error(403, "forbidden", "not the launch URL of a registered SMART app")
    refusal = await _refusal_by_fhir(FhirReader(ui.runtime.http, ui.config.fhir_base_url, session.access_token), parsed)
    if refusal is not None:
        return refusal
    try:
        value = await ui.auth.register_launch(launch_context(app, session, parsed))
    except OAuthFailure as exc:
        await record_launch(ui.runtime.sessions, session, app, parsed, ui.now(), refused=str(exc))
        return _error(502, "launch_refused", str(exc))
    await record_launch(ui.runtime.sessions, session, app, parsed, ui.now())
    url = launch_url(parsed.url, ui.config.fhir_base_url, value)
    return JSONResponse({"url": url}, headers={"Cache-Control": "no-store"})


async def launches_page(ui: UiState, session: Session) -> Response:
    rows = await user_launches(ui.runtime.sessions, session.user_ref)
    shown = [(row, json.loads(row.options or "{}"), json.loads(row.fhir_context or "[]")) for row in rows]
    return render("launches.html", title="SMART launches", session=session, launches=shown)


router = APIRouter()


@router.post("/ui/launch")
async def launch(request: Request, registry: AuthserverAdminDep) -> Response:
    """An app chosen in the Apps menu, or a card's smart link clicked: register the launch
    context at the authserver and answer the URL to open (launch URL + iss + launch). Only
    for a patient the user may see (checked here with the user's token, and again by the
    authserver), an encounter of that patient and fhirContext resources the user can read."""
    ui = ui_state(request)
    session = await ui.posting_session(request)
    if isinstance(session, Response):
        return session
    try:
        body = await request.json()
    except ValueError:
        body = None
    parsed = parse_launch(body)
    if isinstance(parsed, str):
        return _error(400, "invalid_request", parsed)
    return await start_launch(ui, registry, session, parsed)


@router.get("/launches")
async def launches(request: Request) -> Response:
    return await with_session(request, launches_page)
