"""The clinician's pages: the patient list, the chart (with its CDS cards and order form), the
exchange inspector (SMART launches: launcher.py).

Every page needs a session; without one the browser goes to /login and comes back. A page view
refreshes the access token when it is about to expire and slides the idle timeout.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ehr import exchange_log
from ehr.api_bodies import UUIDISH
from ehr.authserver_admin import AuthserverAdmin, smart_apps
from ehr.deps import AuthserverAdminDep
from ehr.errors import UpstreamFailed
from ehr.ui.chart import Chart, FhirReader, FhirUnauthorized, FhirUnavailable
from ehr.ui.orders import LAB_TESTS, MEDICATIONS
from ehr.ui.session import SESSION_COOKIE, Session
from ehr.ui.state import UiState, ui_state
from ehr.ui.waterfall import SCALE, waterfall
from ehr.ui.web import render

log = logging.getLogger(__name__)
# The Apps menu's launch options (authserver/launch_options.py): token lifetimes to choose (the
# default is the authorization server's own), and the errors it can simulate.
LIFETIMES = (60, 120, 180, 240)
SIMULATED_ERRORS = {
    "access_denied": "Authorization denied by the user (access_denied)",
    "invalid_scope": "Scope refused (invalid_scope)",
    "token_revoked": "Access token refused by the FHIR server before it expires",
    "refresh_refused": "Refresh refused (invalid_grant)",
}
Page = Callable[[UiState, Session], Awaitable[Response]]


async def with_session(request: Request, page: Page) -> Response:
    """Run `page` for the signed-in user (token refreshed, idle timeout slid), else go sign in."""
    ui = ui_state(request)
    session = await ui.read(request)
    fresh = await ui.fresh(session) if session is not None else None
    if fresh is None:
        return _sign_in_again(request)
    fresh = fresh.touched(ui.now())
    try:
        response = await page(ui, fresh)
    except FhirUnauthorized:
        response = _sign_in_again(request)
        ui.box.clear(response, SESSION_COOKIE)
        return response
    if not any(c.startswith(SESSION_COOKIE + "=") for c in response.headers.getlist("set-cookie")):
        ui.write(response, fresh)  # unless the page wrote a changed session itself
    return response


def _sign_in_again(request: Request) -> Response:
    response = RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)
    response.headers["Cache-Control"] = "no-store"
    return response


def _reader(ui: UiState, session: Session) -> FhirReader:
    return FhirReader(ui.runtime.http, ui.config.fhir_base_url, session.access_token)


def _unavailable() -> Response:
    return render("error.html", 503, title="Try again", message="The FHIR server could not answer just now.")


def _not_found(session: Session) -> Response:
    # The same page for a patient that does not exist and one outside the user's panel.
    return render(
        "error.html", 404, title="No such patient", message="This patient is not in your list.", session=session
    )


async def _read_chart(ui: UiState, session: Session, patient_id: str) -> Chart | Response:
    """The patient's chart, or the error page to show instead (FHIR down, or no such patient)."""
    try:
        found = await _reader(ui, session).chart(patient_id)
    except FhirUnavailable:
        return _unavailable()
    return _not_found(session) if found is None else found


async def patients_page(ui: UiState, session: Session) -> Response:
    try:
        found = await _reader(ui, session).patients()
    except FhirUnavailable:
        return _unavailable()
    return render("patients.html", title="My patients", session=session, patients=found)


async def chart_page(registry: AuthserverAdmin, patient_id: str, ui: UiState, session: Session) -> Response:
    found = await _read_chart(ui, session, patient_id)
    if isinstance(found, Response):
        return found
    try:
        apps: list[dict[str, Any]] | None = smart_apps(await registry.list_clients())
    except UpstreamFailed:
        apps = None  # the chart still opens; the Apps menu says why it is empty
    return render(
        "chart.html",
        title=found.name,
        session=session,
        chart=found,
        medications=MEDICATIONS,
        lab_tests=LAB_TESTS,
        apps=apps,
        simulated_errors=SIMULATED_ERRORS,
        lifetimes=LIFETIMES,
    )


async def sections_page(patient_id: str, ui: UiState, session: Session) -> Response:
    found = await _read_chart(ui, session, patient_id)
    if isinstance(found, Response):
        return found
    return render("sections.html", chart=found)


async def exchanges_page(ui: UiState, session: Session) -> Response:
    return render("exchanges.html", title="CDS exchanges", session=session)


async def exchange_page(hook_instance: str, ui: UiState, session: Session) -> Response:
    rows = []
    if re.fullmatch(UUIDISH, hook_instance):
        rows = await exchange_log.exchange_rows(ui.runtime.sessions, hook_instance)
    if not session.is_admin:
        rows = [r for r in rows if r.user_ref is not None and r.user_ref == session.user_ref]
    if not rows:
        return render("error.html", 404, title="Not found", message="No such exchange.", session=session)
    decisions = await exchange_log.card_decisions(ui.runtime.sessions, hook_instance)
    data = exchange_log.exchange_json(rows, decisions)
    bars = {s["serviceId"]: waterfall(s["timings"]) for s in data["services"]}
    return render("exchange.html", title="CDS exchange", session=session, exchange=data, bars=bars, scale=SCALE)


router = APIRouter()


@router.get("/patients")
async def patients(request: Request) -> Response:
    return await with_session(request, patients_page)


@router.get("/patients/{patient_id}")
async def chart(request: Request, patient_id: str, registry: AuthserverAdminDep) -> Response:
    return await with_session(request, partial(chart_page, registry, patient_id))


@router.get("/patients/{patient_id}/sections")
async def sections(request: Request, patient_id: str) -> Response:
    """The chart's clinical sections alone, re-read after a suggestion was accepted."""
    return await with_session(request, partial(sections_page, patient_id))


@router.get("/exchanges")
async def exchanges(request: Request) -> Response:
    return await with_session(request, exchanges_page)


@router.get("/exchanges/{hook_instance}")
async def exchange(request: Request, hook_instance: str) -> Response:
    """One exchange, per service: the timing waterfall beside the numbers, then what was sent
    and received. A user sees only their own hook calls (as GET /api/exchanges/{id})."""
    return await with_session(request, partial(exchange_page, hook_instance))
