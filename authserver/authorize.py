"""The authorization endpoint: GET and POST /authorize, and the patient picker (SMART App Launch
2.2 "Obtain authorization code"; RFC 6749 §4.1; RFC 7636; RFC 9700 §2.1; RFC 9207).

Checks, in this order (RFC 6749 §4.1.2.1: nothing is sent to a redirect URI before it is known
to be the client's):
1. `client_id` names an active smart-app (or ehr) client, and `redirect_uri` EXACTLY equals one
   of its registered URIs (RFC 6749 §3.1.2.3 simple string comparison; RFC 9700 §2.1 exact
   matching, without even the loopback-port leeway it allows native apps). Otherwise: an HTML error
   page (400), never a redirect.
2. Then errors go back to the app as `error`, `error_description`, `state`, `iss`:
   `response_type=code` only (unsupported_response_type); `state` present (SMART requires it);
   `aud` present and equal to the FHIR base URL (SMART 2.2: it keeps a genuine token from being
   leaked to a counterfeit resource server; RFC 8707 spirit); PKCE with `code_challenge_method=S256` and a
   well-formed challenge (plain and missing refused, RFC 9700 §2.1.1); `scope` well-formed
   (common.scopes; invalid_scope); `launch`, when given, resolves to an unused, unexpired context
   registered for this very app (invalid_request otherwise, one answer for all three).
3. Not signed in → redirect to /login, which comes back here afterwards (as a GET).
4. Granted scope = requested ∩ the client's registered scope ∩ the user's ROLE_CEILING. The
   EHR launch context is handed over only with the `launch` scope, and only to the user it was
   registered for. `launch/patient` or a patient/ scope without an EHR launch: a Patient user is
   their own patient; a Practitioner picks from the patients the FHIR server says they may see.
5. No consent screen (a demo: every app is registered by the administrator, and the grant never
   exceeds the app's registered scope ∩ the user's role). The code goes back in the redirect with
   `state` and `iss` (RFC 9207, mix-up defence).

GET answers with 302 and POST (SMART "authorize-post") with 303, so the browser follows with GET.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from authserver import clients, codes, launch_context, sessions
from authserver.clients import Client
from authserver.codes import CHALLENGE_S256, CodeGrant
from authserver.deps import AuthState, StateDep
from authserver.launch_context import FHIR_ID, LaunchContext
from authserver.launch_options import LaunchOptions
from authserver.login import csrf_cookie, current_user, error_page, origin_of, page
from authserver.models import LaunchRow
from authserver.reach import ReachUnavailableError
from authserver.sessions import CSRF_COOKIE, LoginSession
from authserver.settings import AuthSettings
from authserver.users import User
from common.runtime import Runtime
from common.scopes import InvalidScopeError, ScopeSet, narrow, parse_scopes

PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
)
PICKER_PURPOSE = "picker"
MAX_PARAM = 2048
log = logging.getLogger(__name__)


# --- request validation ------------------------------------------------------------------------


class PageError(Exception):
    """Shown to the user; never redirected (unknown client or unregistered redirect URI)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RedirectError(Exception):
    """Sent back to the (validated) redirect URI as an RFC 6749 §4.1.2.1 error response."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class AuthorizeRequest:
    client: Client
    redirect_uri: str
    state: str
    scope: ScopeSet
    code_challenge: str
    nonce: str | None
    launch: str | None
    params: dict[str, str]  # the accepted parameters, for the picker's form and the way back from login


def read_params(source: Any) -> tuple[dict[str, str], set[str]]:
    """The authorization parameters and the names that were repeated (RFC 6749 §3.1)."""
    params: dict[str, str] = {}
    repeated: set[str] = set()
    for name in PARAMS:
        values = [v for v in source.getlist(name) if isinstance(v, str)]
        if len(values) > 1:
            repeated.add(name)
        if values:
            params[name] = values[0]
    return params, repeated


async def validate(
    runtime: Runtime, settings: AuthSettings, params: dict[str, str], repeated: set[str]
) -> AuthorizeRequest:
    client_id = params.get("client_id", "")
    if not client_id or "client_id" in repeated:
        raise PageError("The request does not name the application (client_id).")
    async with runtime.sessions() as session:
        client = await clients.get(session, client_id[:128])
    if client is None or not client.active or client.kind not in ("smart-app", "ehr"):
        raise PageError("The application is not registered here, or has been disabled.")
    redirect_uri = params.get("redirect_uri", "")
    if "redirect_uri" in repeated or redirect_uri not in client.redirect_uris:
        raise PageError("The redirect_uri is missing or is not registered for this application.")
    # From here on, errors go back to the application.
    if repeated:
        raise RedirectError("invalid_request", f"{sorted(repeated)[0]} is repeated")
    if any(len(v) > MAX_PARAM for v in params.values()):
        raise RedirectError("invalid_request", "a parameter is too long")
    if params.get("response_type") != "code":
        raise RedirectError("unsupported_response_type", "only response_type=code is supported")
    state = params.get("state", "")
    if not state:
        raise RedirectError("invalid_request", "state is required (SMART App Launch)")
    aud = params.get("aud", "")
    if not aud:
        raise RedirectError("invalid_request", "aud is required: the FHIR base URL the token is for")
    base = settings.fhir_base_url.rstrip("/")
    if aud not in (base, base + "/"):  # exactly the FHIR base (one trailing slash tolerated)
        raise RedirectError("invalid_request", "aud is not the FHIR server of this authorization server")
    method = params.get("code_challenge_method", "")
    if method != "S256":
        raise RedirectError(
            "invalid_request",
            "PKCE is required with code_challenge_method=S256" + (" (plain is not accepted)" if method else ""),
        )
    challenge = params.get("code_challenge", "")
    if not CHALLENGE_S256.fullmatch(challenge):
        raise RedirectError("invalid_request", "code_challenge must be a base64url SHA-256 (43 characters)")
    try:
        scope = parse_scopes(params.get("scope", ""))
    except InvalidScopeError as exc:
        raise RedirectError("invalid_scope", str(exc)) from None
    if not scope.resources and not scope.other:
        raise RedirectError("invalid_scope", "scope is required")
    nonce = params.get("nonce") or None
    if nonce is not None and len(nonce) > 255:
        raise RedirectError("invalid_request", "nonce is too long")
    return AuthorizeRequest(
        client=client,
        redirect_uri=redirect_uri,
        state=state,
        scope=scope,
        code_challenge=challenge,
        nonce=nonce,
        launch=params.get("launch") or None,
        params=params,
    )


def redirect_to(redirect_uri: str, values: dict[str, str], status: int) -> RedirectResponse:
    """Add parameters to the redirect URI's query, keeping the query it was registered with."""
    parts = urlsplit(redirect_uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + [(k, v) for k, v in values.items() if v]
    response = RedirectResponse(urlunsplit(parts._replace(query=urlencode(query))), status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def needs_patient(granted: ScopeSet) -> bool:
    """SMART 2.2: launch/patient asks for a patient; a patient/ scope grants nothing without one."""
    return "launch/patient" in granted.other or granted.has_context("patient")


# --- the flow ------------------------------------------------------------------------------------

Select = Callable[[AuthorizeRequest, User, LoginSession], Awaitable[Response]]


def error_redirect(
    issuer: str, client_id: str, redirect_uri: str, state: str, exc: RedirectError, status: int
) -> Response:
    log.info("authorization error for %s: %s", client_id, exc.error)
    values = {"error": exc.error, "error_description": exc.description, "state": state, "iss": issuer}
    return redirect_to(redirect_uri, values, status)


async def handle(
    request: Request,
    state: AuthState,
    params: dict[str, str],
    repeated: set[str],
    status: int,
    select: Select | None = None,
) -> Response:
    """Validate, then authorize; every error after the redirect URI is known goes back to it."""
    issuer = state.settings.base_url
    try:
        areq = await validate(state.runtime, state.settings, params, repeated)
    except PageError as exc:
        return error_page("This sign-in request cannot be completed", exc.message, 400, not_redirected=True)
    except RedirectError as exc:
        return error_redirect(issuer, "?", params["redirect_uri"], params.get("state", ""), exc, status)
    try:
        return await authorize(request, state, areq, status, select)
    except RedirectError as exc:
        return error_redirect(issuer, areq.client.client_id, areq.redirect_uri, areq.state, exc, status)


async def _registered_launch(runtime: Runtime, areq: AuthorizeRequest) -> LaunchRow | None:
    if areq.launch is None:
        return None
    async with runtime.sessions() as session:
        registered = await launch_context.find(session, areq.launch, areq.client.client_id, int(runtime.clock()))
    if registered is None:
        raise RedirectError("invalid_request", "launch is unknown, expired, already used or not for this app")
    return registered


def granted_scope(areq: AuthorizeRequest, user: User, registered: LaunchRow | None) -> ScopeSet:
    """Requested ∩ the client's registered scope ∩ the user's role ceiling; an EHR launch only for
    the user it was registered for, and only with the launch scope."""
    if registered is not None and registered.username != user.username:
        raise RedirectError("access_denied", "this launch was registered for another user")
    granted = narrow(narrow(areq.scope, parse_scopes(areq.client.scope)), user.ceiling())
    if not granted.resources and not granted.other:
        raise RedirectError("invalid_scope", "none of the requested scopes is allowed to this app and user")
    if registered is not None and "launch" not in granted.other:
        raise RedirectError("invalid_scope", "a launch parameter needs the launch scope")
    if registered is not None:
        simulated = LaunchOptions.from_column(registered.launch_options).simulate_error
        if simulated in ("access_denied", "invalid_scope"):
            # The EHR asked this launch to fail here (launch_options.py), as a user's denial
            # or an unacceptable scope would (RFC 6749 §4.1.2.1).
            raise RedirectError(simulated, "simulated by the EHR's launch options")
    return granted


async def authorize(
    request: Request, state: AuthState, areq: AuthorizeRequest, status: int, select: Select | None
) -> Response:
    registered = await _registered_launch(state.runtime, areq)
    signed_in = await current_user(request, state.runtime)
    if signed_in is None:
        return RedirectResponse("/login?" + urlencode({"next": "/authorize?" + urlencode(areq.params)}), status)
    user, login = signed_in
    granted = granted_scope(areq, user, registered)
    if select is not None:
        return await select(areq, user, login)
    if registered is not None:
        context = LaunchContext.of(registered)
    elif needs_patient(granted):
        if user.role != "Patient":
            return await picker(request, state, areq, user)
        context = LaunchContext(patient=user.resource_id)
    else:
        context = LaunchContext()
    return await issue_code(state, areq, user, login, granted, context, status, registered)


async def issue_code(
    state: AuthState,
    areq: AuthorizeRequest,
    user: User,
    login: LoginSession,
    granted: ScopeSet,
    context: LaunchContext,
    status: int,
    registered: LaunchRow | None = None,
) -> Response:
    runtime, settings = state.runtime, state.settings
    now = int(runtime.clock())
    grant = CodeGrant(
        client_id=areq.client.client_id,
        redirect_uri=areq.redirect_uri,
        code_challenge=areq.code_challenge,
        username=user.username,
        scope=str(granted),
        context=context,
        nonce=areq.nonce,
        session_hash=login.id_hash,
        auth_time=login.auth_time,
    )
    async with runtime.sessions() as session, session.begin():
        if registered is not None and not await launch_context.consume(session, registered.launch_hash, now):
            raise RedirectError("invalid_request", "launch is unknown, expired, already used or not for this app")
        code = await codes.create(session, grant, now, settings.authorization_code_lifetime_seconds)
    return redirect_to(areq.redirect_uri, {"code": code, "state": areq.state, "iss": settings.base_url}, status)


async def picker(request: Request, state: AuthState, areq: AuthorizeRequest, user: User) -> Response:
    try:
        choices = await state.patients.patients(user)
    except ReachUnavailableError as exc:
        raise RedirectError("temporarily_unavailable", "the patient list could not be fetched; try again") from exc
    cookie = csrf_cookie(request)
    response = page(
        "picker.html",
        form_targets=[origin_of(areq.redirect_uri) or ""],
        title="Choose a patient",
        app_name=areq.client.name,
        display=user.display,
        patients=choices,
        hidden=sorted(areq.params.items()),
        csrf=state.csrf.token(cookie, PICKER_PURPOSE),
    )
    sessions.set_csrf_cookie(response, cookie)
    return response


async def select_patient(
    form: FormData, state: AuthState, areq: AuthorizeRequest, user: User, login: LoginSession
) -> Response:
    """The picker's answer for a request validated again: a patient the user may see."""
    if areq.launch is not None:
        raise RedirectError("invalid_request", "the patient picker is for standalone launches only")
    if form.get("cancel"):
        raise RedirectError("access_denied", "the user cancelled")
    granted = narrow(narrow(areq.scope, parse_scopes(areq.client.scope)), user.ceiling())
    patient = form.get("patient")
    if not isinstance(patient, str) or not FHIR_ID.fullmatch(patient):
        raise RedirectError("access_denied", "no patient was chosen")
    try:
        visible = await state.reach.can_see(user, patient)
    except ReachUnavailableError as exc:
        raise RedirectError("temporarily_unavailable", "the patient could not be checked; try again") from exc
    if not visible:
        raise RedirectError("access_denied", "the patient is not available to this user")
    return await issue_code(state, areq, user, login, granted, LaunchContext(patient=patient), 303)


# --- routes --------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/authorize")
async def authorize_get(request: Request, state: StateDep) -> Response:
    params, repeated = read_params(request.query_params)
    return await handle(request, state, params, repeated, 302)


@router.post("/authorize")
async def authorize_post(request: Request, state: StateDep) -> Response:
    params, repeated = read_params(await request.form())
    return await handle(request, state, params, repeated, 303)


@router.post("/authorize/select")
async def authorize_select(request: Request, state: StateDep) -> Response:
    """The picker's answer: CSRF-checked, the whole request validated again, the patient
    checked against the FHIR server's rule (a tampered form gains nothing)."""
    form = await request.form()
    if not state.csrf.check(request.cookies.get(CSRF_COOKIE), PICKER_PURPOSE, form.get("csrf")):
        return error_page("Request refused", "The form has expired. Go back to the application and start again.", 403)
    params, repeated = read_params(form)
    return await handle(request, state, params, repeated, 303, functools.partial(select_patient, form, state))
