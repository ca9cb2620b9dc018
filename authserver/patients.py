"""The patient picker's source: the patients a user may choose from at /authorize.

SMART App Launch 2.2 "context-standalone-patient": without an EHR launch, a Practitioner picks a
patient from those the FHIR server says they may see; a Patient user is their own patient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from authserver.launch_context import FHIR_ID
from authserver.reach import FhirReach, ReachUnavailableError
from authserver.users import User


@dataclass(frozen=True)
class PatientChoice:
    id: str
    display: str
    birth_date: str = ""


class PatientDirectory(Protocol):
    async def patients(self, user: User) -> list[PatientChoice]: ...


def _display(resource: Mapping[str, Any]) -> str:
    names = resource.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        name = names[0]
        if isinstance(name.get("text"), str):
            return str(name["text"])
        given = [g for g in name.get("given", []) if isinstance(g, str)]
        family = name.get("family") if isinstance(name.get("family"), str) else ""
        text = " ".join([*given, str(family)]).strip()
        if text:
            return text
    return f"Patient/{resource.get('id')}"


@dataclass
class FhirPatients:
    """The patients a user may see, asked of the FHIR server (which owns the rule,
    fhirserver/compartments.py) with the same short-lived, user-scoped, unrecorded token reach.py mints:
    `GET {fhir}/Patient?_count=50`. A Patient user is offered themselves only, without a call."""

    reach: FhirReach
    count: int = 50

    async def patients(self, user: User) -> list[PatientChoice]:
        if user.role == "Patient":
            return [PatientChoice(user.resource_id, user.display)]
        if user.role != "Practitioner":
            return []
        token = await self.reach._token(user)  # reach.py's token minting, reused on purpose
        try:
            response = await self.reach.http.get(
                f"{self.reach.fhir_base}/Patient",
                params={"_count": str(self.count)},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
            )
            bundle = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            raise ReachUnavailableError(type(exc).__name__) from None
        if not isinstance(bundle, dict):
            raise ReachUnavailableError(f"FHIR server answered {response.status_code}")
        found: list[PatientChoice] = []
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
                rid = resource.get("id")
                if isinstance(rid, str) and FHIR_ID.fullmatch(rid):
                    birth = resource.get("birthDate")
                    found.append(PatientChoice(rid, _display(resource), birth if isinstance(birth, str) else ""))
        return found
