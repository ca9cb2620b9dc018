"""What the authorization server offers, stated once, and every discovery document built from it.

Four documents describe the same server and must never disagree:
- RFC 8414 authorization server metadata (`{auth}/.well-known/oauth-authorization-server`);
- OpenID Connect Discovery 1.0 §3 (`{auth}/.well-known/openid-configuration`);
- SMART App Launch 2.2 "Conformance" (`{fhir}/.well-known/smart-configuration`);
- the FHIR CapabilityStatement's `rest.security` (SMART 2.2 "Declaring support", and the
  oauth-uris extension the Python fhirclient reads).

The authorization server builds the first two from its settings and the FHIR server the other
two from its own (it knows the authorization server only by URL), both through `AuthServerFacts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type name, not a secret
CLIENT_CREDENTIALS = "client_credentials"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
GRANT_TYPES = (AUTHORIZATION_CODE, REFRESH_TOKEN, CLIENT_CREDENTIALS, TOKEN_EXCHANGE)
# OpenID Connect covers the user grants only.
OPENID_GRANT_TYPES = (AUTHORIZATION_CODE, REFRESH_TOKEN)
# Client assertion algorithms (SMART 2.2 asks for RS384 and ES384); the authorization server's
# `client_assertion_algorithms` setting defaults to these.
CLIENT_ASSERTION_ALGORITHMS = ("RS384", "ES384")
TOKEN_AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "none")
INTROSPECTION_AUTH_METHODS = ("private_key_jwt", "client_secret_basic")
SCOPES_SUPPORTED = (
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
)
ID_TOKEN_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "fhirUser", "name")
# SMART 2.2 capabilities really offered. Not offered: context-standalone-encounter, userinfo.
SMART_CAPABILITIES = (
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
)
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
RESTFUL_SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


@dataclass(frozen=True)
class AuthServerFacts:
    """The facts that vary between deployments; everything else above is what the code does."""

    issuer: str
    client_assertion_algorithms: tuple[str, ...] = CLIENT_ASSERTION_ALGORITHMS
    id_token_signing_alg: str = "ES384"  # noqa: S105 - an algorithm name

    def url(self, path: str) -> str:
        return f"{self.issuer.rstrip('/')}{path}"

    def endpoints(self) -> dict[str, str]:
        return {
            "issuer": self.issuer.rstrip("/"),
            "authorization_endpoint": self.url("/authorize"),
            "jwks_uri": self.url("/jwks"),
            "token_endpoint": self.url("/token"),
            "introspection_endpoint": self.url("/introspect"),
            "revocation_endpoint": self.url("/revoke"),
        }

    def client_auth(self) -> dict[str, list[str]]:
        return {
            "token_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
            "token_endpoint_auth_signing_alg_values_supported": list(self.client_assertion_algorithms),
        }


def oauth_metadata(facts: AuthServerFacts) -> dict[str, Any]:
    """RFC 8414 §2 authorization server metadata: what this server really offers today."""
    return {
        **facts.endpoints(),
        "grant_types_supported": list(GRANT_TYPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        **facts.client_auth(),
        "introspection_endpoint_auth_methods_supported": list(INTROSPECTION_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": list(TOKEN_AUTH_METHODS),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,  # RFC 9207
    }


def openid_configuration(facts: AuthServerFacts) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 §3: only what this server does (no userinfo endpoint)."""
    endpoints = facts.endpoints()
    return {
        **{k: endpoints[k] for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")},
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": list(OPENID_GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [facts.id_token_signing_alg],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "claims_supported": list(ID_TOKEN_CLAIMS),
        **facts.client_auth(),
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }


def smart_configuration(facts: AuthServerFacts) -> dict[str, Any]:
    """SMART App Launch 2.2 "Conformance" (`{fhir}/.well-known/smart-configuration`).

    The authorization code flow with PKCE S256 (EHR and standalone launch, GET and POST to
    /authorize, public, symmetric and asymmetric clients), OpenID Connect id_tokens with fhirUser,
    the EHR launch context and the standalone patient picker, need_patient_banner and
    smart_style_url, refresh tokens for offline_access and online_access, SMART v1 and v2 scopes;
    plus backend services (client_credentials) and token exchange for CDS Services.
    """
    return {
        **facts.endpoints(),
        "grant_types_supported": list(GRANT_TYPES),
        **facts.client_auth(),
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": list(SMART_CAPABILITIES),
    }


def capability_security(facts: AuthServerFacts) -> dict[str, Any]:
    """CapabilityStatement.rest.security of a FHIR server protected by this authorization server."""
    endpoints = facts.endpoints()
    uris = {
        "authorize": endpoints["authorization_endpoint"],
        "token": endpoints["token_endpoint"],
        "revoke": endpoints["revocation_endpoint"],
        "introspect": endpoints["introspection_endpoint"],
    }
    return {
        "cors": True,  # for registered SMART apps' origins, and any configured ones
        "service": [{"coding": [{"system": RESTFUL_SECURITY_SERVICE, "code": "SMART-on-FHIR"}]}],
        # The Python fhirclient finds the OAuth endpoints only through this extension.
        "extension": [{"url": OAUTH_URIS, "extension": [{"url": name, "valueUri": uri} for name, uri in uris.items()]}],
        "description": f"Bearer tokens (RFC 9068) issued by {endpoints['issuer']}, for this base URL only",
    }
