"""The CapabilityStatement served at /metadata (FHIR R4 §3.1.0.1.11 "capabilities").

It states only what the server really supports. Resource interactions are added here as they
are implemented, so a client never discovers an interaction that answers 404.
"""

from __future__ import annotations

from typing import Any

from common import discovery
from common.discovery import AuthServerFacts, capability_security
from fhirserver.settings import FhirSettings

SOFTWARE_VERSION = "0.1.0"


INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"]


def _resource(rtype: str) -> dict[str, Any]:
    from fhirserver import searchparams

    search = [
        {"name": p.code, "type": p.type, "definition": f"http://hl7.org/fhir/SearchParameter/{rtype}-{p.code}"}
        for p in searchparams.indexed_params(rtype)
    ]
    out: dict[str, Any] = {
        "type": rtype,
        "interaction": [{"code": code} for code in INTERACTIONS],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchInclude": [f"{rtype}:*"],
        "searchRevInclude": ["*"],
        "searchParam": search,
    }
    if rtype == "Patient":
        out["operation"] = [
            {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}
        ]
    return out


def capability_statement(settings: FhirSettings, started: str) -> dict[str, Any]:
    """What this server really supports: every type the search engine indexes, all of them
    behind SMART scopes (FHIR R4 CapabilityStatement; SMART 2.2 §"Declaring support")."""
    from fhirserver import searchparams

    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": started,
        "kind": "instance",
        "software": {"name": "mockehr fhirserver", "version": SOFTWARE_VERSION},
        "implementation": {"description": "mockehr FHIR R4 server", "url": settings.fhir_base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": capability_security(facts(settings)),
                "resource": [_resource(t) for t in sorted(searchparams.SUPPORTED_TYPES)],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }


def facts(settings: FhirSettings) -> AuthServerFacts:
    """The authorization server this FHIR server trusts, as the discovery documents describe it.

    The FHIR server knows it only by URL: the client assertion algorithms are the shared default
    (common/discovery.py), which the authorization server's setting also starts from.
    """
    return AuthServerFacts(issuer=settings.authserver_url)


def smart_configuration(settings: FhirSettings) -> dict[str, Any]:
    """{fhir}/.well-known/smart-configuration (SMART App Launch 2.2 §Discovery / Conformance),
    built with the authorization server's own metadata from one set of facts (common/discovery.py)."""
    return discovery.smart_configuration(facts(settings))
