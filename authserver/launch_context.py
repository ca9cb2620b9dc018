"""The EHR launch context: what the EHR registers at `POST /launch` (authserver/launch.py, which
describes the protocol), checked, stored by its SHA-256 and consumed once.

SMART App Launch 2.2 "Launch context" and "fhirContext"; CDS Hooks 2.0 Link.appContext. The
authorization code (codes.py), the refresh family (refresh.py) and the token response
(token_response.py) carry a `LaunchContext` on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from authserver.clients import Client
from authserver.errors import InvalidRequestError
from authserver.launch_options import LaunchOptions
from authserver.launch_options import parse as parse_options
from authserver.models import LaunchRow
from authserver.sessions import digest, new_secret
from authserver.users import User
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
