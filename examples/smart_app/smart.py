"""The SMART App Launch steps on Python `fhirclient` (blocking: the app runs them in a worker thread).

fhirclient builds the authorization request (state, PKCE S256, `aud`, `launch` and the `launch`
scope), checks the state on the way back, redeems the code with the verifier, keeps the whole
token response as `launch_context` (patient, appContext, fhirContext, encounter, id_token) and
signs the FHIR reads with the access token. The endpoints come from `{iss}/.well-known/smart-configuration`
(SMART App Launch 2.2 §2.2 "Discovery"), which fhirclient 4.4 does not read (it knows only the
CapabilityStatement's oauth-uris extension, deprecated since SMART 2.0): they are handed to its
OAuth2 auth the way its own discovery would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import requests
from fhirclient.auth import FHIRAuth
from fhirclient.client import FHIRClient
from fhirclient.models.patient import Patient

from examples.smart_app.settings import SmartAppSettings

# FHIR R4 §2.1.0 "id": the patient id from the token response goes into a URL path.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class LaunchError(Exception):
    """Shown on the page (never redirected anywhere)."""


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorize: str
    token: str
    jwks_uri: str


@dataclass(frozen=True)
class MedicationView:
    """One MedicationRequest as the page shows it."""

    id: str
    text: str
    status: str
    authored: str
    dosage: str


MAX_MEDICATIONS = 50


@dataclass(frozen=True)
class PatientView:
    id: str
    name: str
    birth_date: str


def discover(session: requests.Session, fhir_base: str) -> Discovery:
    """SMART App Launch 2.2 §2.2: the authorization server's endpoints, https only, PKCE S256 offered."""
    try:
        response = session.get(f"{fhir_base}/.well-known/smart-configuration", headers={"Accept": "application/json"})
        config = response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        config = None
    if not isinstance(config, dict):
        raise LaunchError("The FHIR server's SMART configuration could not be read.")
    values = [config.get(k) for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")]
    if not all(isinstance(v, str) and v.startswith("https://") for v in values):
        raise LaunchError("The FHIR server's SMART configuration lacks https endpoints.")
    if "S256" not in (config.get("code_challenge_methods_supported") or []):
        raise LaunchError("The authorization server does not offer PKCE S256.")
    return Discovery(*(str(v) for v in values))


def _scope(settings: SmartAppSettings) -> str:
    # fhirclient puts `launch` in front itself when it has a launch token (FHIRClient.desired_scope).
    return " ".join(s for s in settings.scope.split() if s != "launch")


def _client(session: requests.Session, **kwargs: Any) -> Any:
    """A FHIRClient whose server talks through `session` (fhirclient makes a bare one of its own)."""
    client = FHIRClient(**kwargs)
    client.server.session.close()
    client.server.session = session
    return client


def begin(
    settings: SmartAppSettings, session: requests.Session, launch: str, nonce: str
) -> tuple[str, dict[str, Any], Discovery]:
    """Discovery, then fhirclient's authorization URL (with our nonce added), its state and the endpoints."""
    fhir_base = settings.fhir_base_url.rstrip("/")
    found = discover(session, fhir_base)
    client = _client(
        session,
        settings={
            "app_id": settings.client_id,
            "api_base": fhir_base,  # also `aud` (SMART App Launch 2.2 §2.1.6)
            "redirect_uri": settings.redirect_uri,
            "scope": _scope(settings),
            "launch_token": launch,
        },
    )
    client.server.auth = FHIRAuth.create(
        "oauth2",
        state={
            "app_id": settings.client_id,
            "aud": fhir_base,
            "redirect_uri": settings.redirect_uri,
            "authorize_uri": found.authorize,
            "token_uri": found.token,
        },
    )
    url = str(client.authorize_url)
    parts = urlsplit(url)
    query = urlencode([*parse_qsl(parts.query), ("nonce", nonce)])
    return urlunsplit(parts._replace(query=query)), dict(client.state), found


def redeem(settings: SmartAppSettings, session: requests.Session, client_state: dict[str, Any], url: str) -> Any:
    """fhirclient checks the state in `url` and redeems its code (with the PKCE verifier); the client
    it returns holds the access token and the rest of the token response in `launch_context`."""
    client = _client(session, state=client_state)
    try:
        client.handle_callback(url)
    except Exception as exc:  # fhirclient raises bare Exception (bad state, no code, no token)
        raise LaunchError("The authorization code could not be redeemed.") from exc
    if not isinstance(client.launch_context, dict) or not client.ready:
        raise LaunchError("The authorization code could not be redeemed.")
    return client


def fetch_jwks(session: requests.Session, jwks_uri: str) -> object:
    try:
        response = session.get(jwks_uri, headers={"Accept": "application/json"})
        return response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def read_patient(client: Any, session: requests.Session, patient_id: str) -> PatientView:
    """The launch's patient, read through fhirclient with the access token (over this thread's session)."""
    if not FHIR_ID.fullmatch(patient_id):
        raise LaunchError("The launch carried no usable patient id.")
    client.server.session = session
    try:
        patient = Patient.read(patient_id, client.server)
    except Exception as exc:  # fhirclient's HTTP errors, requests' errors, FHIRValidationError
        raise LaunchError("The patient could not be read with the token received.") from exc
    name = f"Patient/{patient_id}"
    if patient.name:
        first = patient.name[0]
        name = first.text or client.human_name(first)
    birth = patient.birthDate.isostring if patient.birthDate is not None else ""
    return PatientView(id=str(patient.id or patient_id), name=str(name), birth_date=str(birth or ""))


def _concept_text(concept: object) -> str:
    if not isinstance(concept, dict):
        return ""
    if isinstance(concept.get("text"), str) and concept["text"]:
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display") or coding.get("code"), str):
            return str(coding.get("display") or coding.get("code"))
    return ""


def read_medications(client: Any, session: requests.Session, patient_id: str) -> list[MedicationView]:
    """The patient's MedicationRequests (FHIR R4 search `patient`), newest first: what the app
    was launched to review. Read with the access token; a server that refuses (the scope was not
    granted) raises LaunchError, which the page shows next to the patient."""
    if not FHIR_ID.fullmatch(patient_id):
        raise LaunchError("The launch carried no usable patient id.")
    client.server.session = session
    path = f"MedicationRequest?patient={quote(patient_id)}&_count={MAX_MEDICATIONS}&_sort=-authoredon"
    try:
        bundle = client.server.request_json(path)
    except Exception as exc:  # fhirclient raises on any status >= 400; requests' errors; bad JSON
        raise LaunchError("The medications could not be read with the token received.") from exc
    found = []
    for entry in (bundle.get("entry") if isinstance(bundle, dict) else None) or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "MedicationRequest":
            continue
        dosage = resource.get("dosageInstruction") or [{}]
        found.append(
            MedicationView(
                id=str(resource.get("id") or ""),
                text=_concept_text(resource.get("medicationCodeableConcept")) or "medication",
                status=str(resource.get("status") or ""),
                authored=str(resource.get("authoredOn") or ""),
                dosage=str(dosage[0].get("text") or "") if isinstance(dosage[0], dict) else "",
            )
        )
    return found[:MAX_MEDICATIONS]
