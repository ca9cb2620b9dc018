"""The CapabilityStatement served at /metadata (FHIR R4 §3.1.0.1.11 "capabilities").

It states only what the server really supports. Resource interactions are added here as they
are implemented, so a client never discovers an interaction that answers 404.
"""

from __future__ import annotations

from typing import Any

from fhirserver.settings import FhirSettings

SOFTWARE_VERSION = "0.1.0"


def capability_statement(settings: FhirSettings, started: str) -> dict[str, Any]:
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
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": f"Bearer tokens (RFC 9068) issued by {settings.authserver_url}",
                },
                "resource": [],
            }
        ],
    }
