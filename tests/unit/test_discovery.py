"""The discovery documents of both services come from one set of facts (common/discovery.py) and
so never disagree: RFC 8414, OpenID Connect Discovery, SMART configuration, CapabilityStatement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from authserver.settings import AuthSettings
from common import discovery
from fhirserver.capability import capability_statement, smart_configuration
from fhirserver.settings import FhirSettings

AUTH = "https://auth.test"
SHARED = (
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "introspection_endpoint",
    "revocation_endpoint",
    "grant_types_supported",
    "scopes_supported",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "response_types_supported",
    "code_challenge_methods_supported",
)


def documents(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    auth = AuthSettings(data_dir=tmp_path, public_url=AUTH)
    fhir = FhirSettings(data_dir=tmp_path, authserver_url=AUTH, public_url="https://fhir.test")
    oauth = discovery.oauth_metadata(auth.discovery_facts())
    return oauth, smart_configuration(fhir), capability_statement(fhir, "2026-01-01")


def test_the_smart_configuration_says_what_the_authorization_server_metadata_says(tmp_path: Path) -> None:
    oauth, smart, _ = documents(tmp_path)
    assert {k: smart[k] for k in SHARED} == {k: oauth[k] for k in SHARED}
    assert oauth["issuer"] == AUTH and oauth["token_endpoint"] == f"{AUTH}/token"


def test_the_capability_statement_names_the_endpoints_of_the_smart_configuration(tmp_path: Path) -> None:
    _, smart, capability = documents(tmp_path)
    security = capability["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {
        "authorize": smart["authorization_endpoint"],
        "token": smart["token_endpoint"],
        "revoke": smart["revocation_endpoint"],
        "introspect": smart["introspection_endpoint"],
    }
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


def test_the_assertion_algorithms_announced_are_the_ones_the_authorization_server_accepts(tmp_path: Path) -> None:
    auth = AuthSettings(data_dir=tmp_path, public_url=AUTH, client_assertion_algorithms=["ES256"])
    facts = auth.discovery_facts()
    for document in (discovery.oauth_metadata(facts), discovery.openid_configuration(facts)):
        assert document["token_endpoint_auth_signing_alg_values_supported"] == ["ES256"]
    # The FHIR server, which knows the authorization server by URL only, announces the default
    # that the authorization server's setting starts from.
    default = AuthSettings(data_dir=tmp_path, public_url=AUTH)
    assert tuple(default.client_assertion_algorithms) == discovery.CLIENT_ASSERTION_ALGORITHMS


def test_the_openid_configuration_announces_the_id_token_algorithm_the_server_signs_with(tmp_path: Path) -> None:
    auth = AuthSettings(data_dir=tmp_path, public_url=AUTH, signing_alg="RS384")
    conf = discovery.openid_configuration(auth.discovery_facts())
    assert conf["id_token_signing_alg_values_supported"] == ["RS384"]
    assert conf["grant_types_supported"] == ["authorization_code", "refresh_token"]
