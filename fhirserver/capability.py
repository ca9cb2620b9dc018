"""The CapabilityStatement served at /metadata (FHIR R4 §3.1.0.1.11 "capabilities").

It states only what the server really supports. Resource interactions are added here as they
are implemented, so a client never discovers an interaction that answers 404.
"""

from __future__ import annotations

from typing import Any

from fhirserver.settings import FhirSettings

SOFTWARE_VERSION = "0.1.0"


OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
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

    auth = settings.authserver_url.rstrip("/")
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
                    "cors": True,  # for registered SMART apps' origins, and any configured ones
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
                    # The Python fhirclient finds the OAuth endpoints only through this extension.
                    "extension": [
                        {
                            "url": OAUTH_URIS,
                            "extension": [
                                {"url": "authorize", "valueUri": f"{auth}/authorize"},
                                {"url": "token", "valueUri": f"{auth}/token"},
                                {"url": "revoke", "valueUri": f"{auth}/revoke"},
                                {"url": "introspect", "valueUri": f"{auth}/introspect"},
                            ],
                        }
                    ],
                    "description": f"Bearer tokens (RFC 9068) issued by {auth}, for this base URL only",
                },
                "resource": [_resource(t) for t in sorted(searchparams.SUPPORTED_TYPES)],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }


def smart_configuration(settings: FhirSettings) -> dict[str, Any]:
    """{fhir}/.well-known/smart-configuration (SMART App Launch 2.2 §Discovery / Conformance).

    What the authorization server really offers: the authorization code flow with PKCE S256 (EHR
    and standalone launch, GET and POST to /authorize, public, symmetric and asymmetric clients),
    OpenID Connect id_tokens with fhirUser, the EHR launch context (patient, encounter,
    fhirContext, appContext) and the standalone patient picker, need_patient_banner and
    smart_style_url, refresh tokens for offline_access and online_access, SMART v1 and v2 scopes;
    plus backend services (client_credentials) and token exchange for CDS Services. Not offered:
    standalone encounter selection (context-standalone-encounter), a userinfo endpoint.
    """
    auth = settings.authserver_url.rstrip("/")
    return {
        "issuer": auth,
        "jwks_uri": f"{auth}/jwks",
        "authorization_endpoint": f"{auth}/authorize",
        "token_endpoint": f"{auth}/token",
        "introspection_endpoint": f"{auth}/introspect",
        "revocation_endpoint": f"{auth}/revoke",
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": [
            "openid",
            "fhirUser",
            "profile",
            "launch",
            "launch/patient",
            "offline_access",
            "online_access",
            "patient/*.rs",
            "patient/*.cruds",
            "user/*.rs",
            "user/*.cruds",
            "system/*.rs",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "authorize-post",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "sso-openid-connect",
            "context-banner",
            "context-style",
            "context-ehr-patient",
            "context-ehr-encounter",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
        ],
    }
