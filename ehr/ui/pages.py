"""The clinician's pages: the patient list, the chart (with its CDS cards and order form), the
exchange inspector, and the SMART launcher behind a card's smart link.

Every page needs a session; without one the browser goes to /login and comes back. A page view
refreshes the access token when it is about to expire and slides the idle timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ehr.authserver_admin import AuthserverAdmin
from ehr.errors import UpstreamFailed
from ehr.ui.chart import FHIR_ID, Chart, FhirReader, FhirUnauthorized, FhirUnavailable
from ehr.ui.oauth import OAuthFailure
from ehr.ui.orders import LAB_TESTS, MEDICATIONS
from ehr.ui.session import SESSION_COOKIE, Session
from ehr.ui.state import UiState, ui_state
from ehr.ui.web import render

log = logging.getLogger(__name__)
MAX_APP_CONTEXT = 8192
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


def pages_router() -> APIRouter:
    router = APIRouter()

    @router.get("/patients")
    async def patients(request: Request) -> Response:
        async def page(ui: UiState, session: Session) -> Response:
            try:
                found = await _reader(ui, session).patients()
            except FhirUnavailable:
                return _unavailable()
            return render("patients.html", title="My patients", session=session, patients=found)

        return await with_session(request, page)

    @router.get("/patients/{patient_id}")
    async def chart(request: Request, patient_id: str) -> Response:
        async def page(ui: UiState, session: Session) -> Response:
            found = await _read_chart(ui, session, patient_id)
            if isinstance(found, Response):
                return found
            return render(
                "chart.html",
                title=found.name,
                session=session,
                chart=found,
                medications=MEDICATIONS,
                lab_tests=LAB_TESTS,
            )

        return await with_session(request, page)

    @router.get("/patients/{patient_id}/sections")
    async def sections(request: Request, patient_id: str) -> Response:
        """The chart's clinical sections alone, re-read after a suggestion was accepted."""

        async def page(ui: UiState, session: Session) -> Response:
            found = await _read_chart(ui, session, patient_id)
            if isinstance(found, Response):
                return found
            return render("sections.html", chart=found)

        return await with_session(request, page)

    @router.get("/exchanges")
    async def exchanges(request: Request) -> Response:
        async def page(ui: UiState, session: Session) -> Response:
            return render("exchanges.html", title="CDS exchanges", session=session)

        return await with_session(request, page)

    @router.post("/ui/launch")
    async def launch(request: Request) -> Response:
        """A card's smart link, clicked: register the EHR launch context at the authserver and
        answer the URL to open (SMART App Launch 2.2 "EHR Launch": launch URL + iss + launch).

        Only a URL that is the launch_url of an active, registered SMART app launches anything
        (CDS Hooks 2.0 Link: type smart "MUST" be a SMART app launch URL; DESIGN.md), and only for
        a patient the user may see (checked here with the user's token, and again by the
        authserver)."""
        ui = ui_state(request)
        session = await ui.posting_session(request)
        if isinstance(session, Response):
            return session
        try:
            body = await request.json()
        except ValueError:
            body = None
        request_body = _launch_body(body)
        if request_body is None:
            return JSONResponse({"error": "invalid_request", "message": "url and patientId are required"}, 400)
        url, patient, encounter, app_context = request_body
        registry: AuthserverAdmin = request.app.state.authserver_admin
        try:
            apps = await registry.list_clients()
        except UpstreamFailed:
            return JSONResponse({"error": "unavailable", "message": "the app registry could not be read"}, 503)
        app = next(
            (a for a in apps if a.get("kind") == "smart-app" and a.get("active") and a.get("launch_url") == url), None
        )
        if app is None:
            return JSONResponse({"error": "forbidden", "message": "not the launch URL of a registered SMART app"}, 403)
        try:
            visible = await _reader(ui, session).chart_visible(patient)
        except FhirUnavailable:
            return JSONResponse({"error": "unavailable", "message": "the FHIR server could not answer"}, 503)
        except FhirUnauthorized:
            return Response(status_code=401, headers={"WWW-Authenticate": "Session"})
        if not visible:
            return JSONResponse({"error": "not_found", "message": "no such patient"}, 404)
        try:
            # The encounter goes into the app's token response: it must be this patient's.
            if encounter and not await _reader(ui, session).encounter_of(patient, encounter):
                return JSONResponse(
                    {"error": "invalid_request", "message": "that encounter is not this patient's"}, 400
                )
        except FhirUnavailable:
            return JSONResponse({"error": "unavailable", "message": "the FHIR server could not answer"}, 503)
        context: dict[str, Any] = {"client_id": app["client_id"], "user": session.user_ref, "patient": patient}
        if encounter:
            context["encounter"] = encounter
        if app_context is not None:
            context["appContext"] = app_context
        try:
            value = await ui.auth.register_launch(context)
        except OAuthFailure as exc:
            return JSONResponse({"error": "launch_refused", "message": str(exc)}, 502)
        parts = urlsplit(url)
        query = "&".join(q for q in (parts.query, urlencode({"iss": ui.config.fhir_base_url, "launch": value})) if q)
        return JSONResponse({"url": urlunsplit(parts._replace(query=query))}, headers={"Cache-Control": "no-store"})

    return router


def _launch_body(body: object) -> tuple[str, str, str | None, str | None] | None:
    if not isinstance(body, dict):
        return None
    url, patient, encounter, app_context = (
        body.get("url"),
        body.get("patientId"),
        body.get("encounterId"),
        body.get("appContext"),
    )
    if not isinstance(url, str) or not url.startswith("https://") or len(url) > 2048:
        return None
    if not isinstance(patient, str) or not FHIR_ID.fullmatch(patient):
        return None
    if encounter is not None and (not isinstance(encounter, str) or not FHIR_ID.fullmatch(encounter)):
        return None
    if app_context is not None and (not isinstance(app_context, str) or len(app_context) > MAX_APP_CONTEXT):
        return None
    return url, patient, encounter or None, app_context
