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

import json
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData, Headers

from authserver import clients, users
from authserver.client_auth import ClientAuthenticator
from authserver.clients import Client
from authserver.deps import PatientReach, StateDep
from authserver.errors import NO_STORE, InvalidRequestError, UnauthorizedClientError
from authserver.launch_options import LaunchOptions
from authserver.launch_options import parse as parse_options
from authserver.models import LaunchRow
from authserver.reach import ReachUnavailableError
from authserver.sessions import digest, new_secret
from authserver.users import User
from common.bodies import parse_json
from common.runtime import Runtime

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 id datatype
_RELATIVE_REFERENCE = re.compile(r"[A-Z][A-Za-z]{0,63}/[A-Za-z0-9\-.]{1,64}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_FHIR_CONTEXT_KEYS = frozenset({"reference", "canonical", "identifier", "type", "role"})
MAX_FHIR_CONTEXT = 20
MAX_APP_CONTEXT = 8192


@dataclass(frozen=True)
class LaunchContext:
    """What the token response tells the app beyond the token (SMART 2.2 "Launch context")."""

    patient: str | None = None
    encounter: str | None = None
    fhir_context: list[dict[str, Any]] = field(default_factory=list)
    app_context: str | None = None
    need_patient_banner: bool = True
    # Not launch context in the SMART sense: how this launch's grant behaves (never sent to the app).
    options: LaunchOptions = field(default_factory=LaunchOptions)

    def columns(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "encounter": self.encounter,
            "fhir_context": json.dumps(self.fhir_context) if self.fhir_context else None,
            "app_context": self.app_context,
            "need_patient_banner": self.need_patient_banner,
            "launch_options": self.options.column(),
        }

    @classmethod
    def of(cls, row: Any) -> LaunchContext:
        """From any row carrying the launch-context columns (launch, code, refresh token)."""
        return cls(
            patient=row.patient,
            encounter=row.encounter,
            fhir_context=json.loads(row.fhir_context) if row.fhir_context else [],
            app_context=row.app_context,
            need_patient_banner=bool(row.need_patient_banner),
            options=LaunchOptions.from_column(row.launch_options),
        )

    def response_fields(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.patient:
            body["patient"] = self.patient
        if self.encounter:
            body["encounter"] = self.encounter
        if self.fhir_context:
            body["fhirContext"] = self.fhir_context
        if self.app_context is not None:
            body["appContext"] = self.app_context
        body["need_patient_banner"] = self.need_patient_banner
        return body


async def find(session: AsyncSession, value: str, client_id: str, now: int) -> LaunchRow | None:
    """The unused, unexpired launch registered for this app, or None (one answer for every failure)."""
    if not value or len(value) > 256:
        return None
    row = await session.get(LaunchRow, digest(value))
    if row is None or row.used_at is not None or row.expires_at <= now or row.client_id != client_id:
        return None
    return row


async def consume(session: AsyncSession, launch_hash: str, now: int) -> bool:
    """Mark the launch used; False if another request consumed it first (single use)."""
    result = await session.execute(
        update(LaunchRow)
        .where(LaunchRow.launch_hash == launch_hash, LaunchRow.used_at.is_(None), LaunchRow.expires_at > now)
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return getattr(result, "rowcount", 0) == 1


def check_fhir_context(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_FHIR_CONTEXT:
        raise InvalidRequestError(f"fhirContext must be an array of at most {MAX_FHIR_CONTEXT} objects")
    items: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict) or not item.keys() <= _FHIR_CONTEXT_KEYS:
            raise InvalidRequestError(
                "each fhirContext item is an object of reference, canonical, identifier, type, role"
            )
        reference, canonical, identifier = item.get("reference"), item.get("canonical"), item.get("identifier")
        if reference is None and canonical is None and identifier is None:
            raise InvalidRequestError("each fhirContext item needs a reference, a canonical or an identifier")
        if reference is not None and (not isinstance(reference, str) or not _RELATIVE_REFERENCE.fullmatch(reference)):
            raise InvalidRequestError("fhirContext reference must be a relative reference Type/id")
        if canonical is not None and (not isinstance(canonical, str) or not canonical or len(canonical) > 1024):
            raise InvalidRequestError("fhirContext canonical must be a canonical URL")
        if identifier is not None and not isinstance(identifier, dict):
            raise InvalidRequestError("fhirContext identifier must be a FHIR Identifier object")
        kind = item.get("type")
        if kind is not None and (not isinstance(kind, str) or not _RESOURCE_TYPE.fullmatch(kind)):
            raise InvalidRequestError("fhirContext type must be a FHIR resource type")
        role = item.get("role")
        if role is not None and (not isinstance(role, str) or not role or len(role) > 1024):
            raise InvalidRequestError("fhirContext role must be a non-empty string (a URI)")
        target = reference.split("/", 1)[0] if isinstance(reference, str) else kind
        if target in ("Patient", "Encounter") and role in (None, "launch"):
            raise InvalidRequestError(
                "Patient and Encounter go in patient/encounter, not in fhirContext with the launch role"
            )
        items.append(dict(item))
    if len(json.dumps(items)) > MAX_APP_CONTEXT:
        raise InvalidRequestError("fhirContext is too large")
    return items


def _optional_id(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not FHIR_ID.fullmatch(value):
        raise InvalidRequestError(f"{name} must be a FHIR id")
    return value


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


def launch_context(body: dict[str, Any], max_lifetime: int) -> LaunchContext:
    """The context the EHR registers, checked (SMART 2.2 "Launch context"; CDS Hooks appContext)."""
    patient = _optional_id(body, "patient")
    if patient is None:
        raise InvalidRequestError("patient is required")
    encounter = _optional_id(body, "encounter")
    app_context = body.get("appContext")
    if app_context is not None and (not isinstance(app_context, str) or len(app_context) > MAX_APP_CONTEXT):
        raise InvalidRequestError(
            "appContext is a string of at most 8192 characters (CDS Hooks Link.appContext); serialize JSON into it"
        )
    banner = body.get("need_patient_banner", False)
    if not isinstance(banner, bool):
        raise InvalidRequestError("need_patient_banner must be a boolean")
    return LaunchContext(
        patient=patient,
        encounter=encounter,
        fhir_context=check_fhir_context(body.get("fhirContext")),
        app_context=app_context,
        need_patient_banner=banner,
        options=parse_options(body.get("launch_options"), max_lifetime=max_lifetime),
    )


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


async def store(runtime: Runtime, app: Client, ehr: Client, user: User, context: LaunchContext, lifetime: int) -> str:
    """Record the launch (only its SHA-256) and return the opaque value the app brings back."""
    value = new_secret()
    now = int(runtime.clock())
    async with runtime.sessions() as session, session.begin():
        await session.execute(delete(LaunchRow).where(LaunchRow.expires_at < now - 3600))
        session.add(
            LaunchRow(
                launch_hash=digest(value),
                client_id=app.client_id,
                registered_by=ehr.client_id,
                username=user.username,
                created_at=now,
                expires_at=now + lifetime,
                **context.columns(),
            )
        )
    return value


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
