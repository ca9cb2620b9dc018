"""Pure parts of the registry and card actions: discovery documents, URLs, scopes, redaction,
and the transaction a suggestion becomes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ehr.discovery import DiscoveryFailed, check_discovery_url, parse_discovery
from ehr.errors import InvalidRequest
from ehr.exchange_log import REDACTED, redact
from ehr.registry import check_scope, default_client_id, template_resource_type
from ehr.suggestions import transaction_bundle

JWT = "eyJhbGciOiJFUzM4NCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLWJ5dGVz"


def test_an_empty_services_list_is_a_valid_discovery_document() -> None:
    assert parse_discovery(b'{"services": []}') == []


@pytest.mark.parametrize(
    "document",
    [
        b"{}",
        b'{"services": {}}',
        b'{"services": [{"hook": "patient-view", "id": "a/b", "description": "d"}]}',
        b'{"services": [{"hook": "patient-view", "id": "%2e%2e", "description": "d"}]}',
        b'{"services": [{"hook": "", "id": "a", "description": "d"}]}',
    ],
)
def test_a_malformed_discovery_document_is_refused(document: bytes) -> None:
    with pytest.raises(DiscoveryFailed):
        parse_discovery(document)


@pytest.mark.parametrize(
    ("url", "loopback", "ok"),
    [
        ("https://cds.example/cds-services", False, True),
        ("http://cds.example/cds-services", True, False),
        ("http://127.0.0.1:8080/cds-services", False, False),
        ("http://127.0.0.1:8080/cds-services", True, True),
        ("http://localhost/cds-services", True, True),
        ("https://cds.example/cds-services?x=1", False, False),
        ("https://user@cds.example/cds-services#f", False, False),
    ],
)
def test_discovery_urls_are_https_or_loopback_http_by_opt_in(url: str, loopback: bool, ok: bool) -> None:
    if ok:
        assert check_discovery_url(url, allow_http_loopback=loopback) == url
    else:
        with pytest.raises(DiscoveryFailed):
            check_discovery_url(url, allow_http_loopback=loopback)


def test_default_client_ids_and_resource_types() -> None:
    assert default_client_id("https://cds.example:8443/cds-services") == "cds-cds.example-8443"
    assert template_resource_type("Observation?patient={{context.patientId}}") == "Observation"
    assert template_resource_type("Patient/{{context.patientId}}") == "Patient"
    assert template_resource_type("{{context.x}}") is None
    assert (
        check_scope(["patient/Patient.read", " patient/Observation.rs "])
        == "patient/Patient.read patient/Observation.rs"
    )


def test_redaction_removes_tokens_and_jwt_shaped_strings_at_any_depth() -> None:
    body: dict[str, Any] = {
        "fhirAuthorization": {"access_token": "opaque-token", "scope": "patient/Patient.rs"},
        "prefetch": {"x": [{"note": JWT}, {"Authorization": "Bearer abc"}]},
        "context": {"patientId": "p1"},
    }
    redacted = redact(body)
    text = json.dumps(redacted)
    assert "opaque-token" not in text and JWT not in text and "Bearer abc" not in text
    assert redacted["fhirAuthorization"] == {"access_token": REDACTED, "scope": "patient/Patient.rs"}
    assert redacted["context"] == {"patientId": "p1"}
    assert body["fhirAuthorization"]["access_token"] == "opaque-token"  # the original is untouched


def test_a_suggestion_becomes_one_transaction() -> None:
    bundle = transaction_bundle(
        [
            {
                "type": "create",
                "resource": {"resourceType": "ServiceRequest", "id": "chosen-by-service", "status": "draft"},
            },
            {"type": "update", "resource": {"resourceType": "Observation", "id": "o1", "status": "final"}},
            {"type": "delete", "resourceId": "MedicationRequest/m1"},
            {"type": "delete", "resourceId": ["MedicationRequest/m2"]},
        ]
    )
    assert bundle["type"] == "transaction"
    requests = [(e["request"]["method"], e["request"]["url"]) for e in bundle["entry"]]
    assert requests == [
        ("POST", "ServiceRequest"),
        ("PUT", "Observation/o1"),
        ("DELETE", "MedicationRequest/m1"),
        ("DELETE", "MedicationRequest/m2"),
    ]
    assert "id" not in bundle["entry"][0]["resource"]  # the server assigns ids on create


@pytest.mark.parametrize(
    "action",
    [
        {"type": "delete", "resourceId": "MedicationRequest/m1?_id=x"},
        {"type": "delete", "resourceId": "../Patient/p"},
        {"type": "delete"},
        {"type": "update", "resource": {"resourceType": "Observation"}},
        {"type": "create", "resource": {"resourceType": "not a type"}},
        {"type": "patch", "resource": {"resourceType": "Observation"}},
    ],
)
def test_a_malformed_action_is_refused(action: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        transaction_bundle([action])
