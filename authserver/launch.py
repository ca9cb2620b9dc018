"""EHR launch: the EHR registers a launch context, the app brings back its opaque handle.

SMART App Launch 2.2 "EHR Launch": the EHR opens the app's launch URL with `iss` and an opaque
`launch`; the app sends that value back to /authorize with the `launch` scope, and the token
response then carries the context. How the EHR and the authorization server share the context is
left to them (as CDS Hooks says of `appContext`); here:

    POST /launch                       (the first-party EHR, private_key_jwt, JSON body)
      {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
       "client_assertion": "<RFC 7523 assertion, aud = the token URL>",
       "client_id": "<the SMART app>", "patient": "<Patient id>", "encounter": "<Encounter id>",
       "user": "<username | Practitioner/id | Patient/id>",
       "fhirContext": [{"reference": "MedicationRequest/1"}, ...],
       "appContext": "<string>", "need_patient_banner": false,
       "launch_options": {"access_token_lifetime": 60, "simulate_error": "refresh_refused"}}
    → 200 {"launch": "<opaque>", "expires_in": 300}

- The value is 256 random bits; only its SHA-256 is stored (`smart_launches`).
- It is bound to the app it was registered for, lives at most `launch_lifetime_seconds` (≤ 300 s)
  and is consumed when the authorization code is issued (single use).
- The user must be in reach of the patient (asked of the FHIR server, like token exchange) and is
  the only user who may complete the launch: /authorize requires that user to be signed in.
- `fhirContext` follows SMART 2.2 "fhirContext": an array of objects, each with at least one of
  `reference` (relative `Type/id`), `canonical` or `identifier`, optional `type` and `role`;
  Patient and Encounter belong in `patient`/`encounter`, not in fhirContext with the launch role.
- `appContext` is a string, as CDS Hooks 2.0 defines Link.appContext ("could be escaped JSON,
  base64 encoded XML, or even a simple string"); it reaches the app in the token response next
  to the SMART launch parameters. An object is refused rather than silently re-encoded.
- `launch_options` (authserver/launch_options.py): a shorter token lifetime or a simulated error
  for this launch only; never sent to the app.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData, Headers

from authserver import clients, users
from authserver.client_auth import ClientAuthenticator
from authserver.clients import Client
from authserver.deps import PatientReach, StateDep
from authserver.errors import NO_STORE, InvalidRequestError, UnauthorizedClientError
from authserver.launch_context import launch_context, store
from authserver.reach import ReachUnavailableError
from authserver.users import User
from common.bodies import parse_json
from common.runtime import Runtime


async def _user(session: AsyncSession, value: object, fhir_base: str) -> User:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise InvalidRequestError("user is required (a username or a Practitioner/Patient reference)")
    reference = value.removeprefix(fhir_base.rstrip("/") + "/")
    user = await users.by_fhir_user(session, reference) if "/" in reference else await users.by_username(session, value)
    if user is None:
        raise InvalidRequestError("user does not name an active user")
    return user


def _json_object(raw: bytes, max_depth: int) -> dict[str, Any]:
    try:
        # Bounded: the body is at most max_body_bytes (BodyLimitMiddleware) and no deeper than
        # max_json_depth, so no RecursionError, whatever arrives before authentication.
        body = parse_json(raw, max_depth=max_depth)
    except ValueError:
        raise InvalidRequestError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body


async def _first_party_ehr(authenticator: ClientAuthenticator, body: dict[str, Any], headers: Headers) -> Client:
    credentials = [
        (name, body[name]) for name in ("client_assertion_type", "client_assertion") if isinstance(body.get(name), str)
    ]
    ehr = await authenticator.authenticate(FormData(credentials), headers)
    if ehr.kind != "ehr" or not ehr.first_party or ehr.auth_method != "private_key_jwt":
        raise UnauthorizedClientError("only the first-party EHR may register launches")
    return ehr


async def _app_and_user(runtime: Runtime, body: dict[str, Any], fhir_base: str) -> tuple[Client, User]:
    async with runtime.sessions() as session:
        app = await clients.get(session, str(body.get("client_id") or ""))
        if app is None or not app.active or app.kind != "smart-app":
            raise InvalidRequestError("client_id does not name an active, registered SMART app")
        return app, await _user(session, body.get("user"), fhir_base)


async def _check_reach(reach: PatientReach, user: User, patient: str) -> None:
    try:
        visible = await reach.can_see(user, patient)
    except ReachUnavailableError as exc:
        raise InvalidRequestError("the patient could not be checked right now; try again") from exc
    if not visible:
        raise InvalidRequestError("the patient is not available to this user")


router = APIRouter()


@router.post("/launch")
async def register_launch(request: Request, state: StateDep) -> JSONResponse:
    settings = state.settings
    body = _json_object(await request.body(), settings.max_json_depth)
    ehr = await _first_party_ehr(state.client_auth, body, request.headers)
    context = launch_context(body, settings.access_token_lifetime_seconds)
    app, user = await _app_and_user(state.runtime, body, settings.fhir_base_url)
    await _check_reach(state.reach, user, context.patient or "")
    lifetime = settings.launch_lifetime_seconds
    value = await store(state.runtime, app, ehr, user, context, lifetime)
    return JSONResponse({"launch": value, "expires_in": lifetime}, headers=NO_STORE)
