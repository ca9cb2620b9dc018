"""The example CDS Service's pure parts: prefetch rendering, drug knowledge, card shapes, settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from examples.cds_service.cards import fit_summary
from examples.cds_service.errors import DataUnavailable
from examples.cds_service.fhir_data import render
from examples.cds_service.knowledge import RXNORM, classes_of, ingredient_names
from examples.cds_service.schemas import Action, Card, FeedbackItem, HookRequest, Link
from examples.cds_service.settings import CdsSettings

SOURCE = {"label": "test"}


def _drug(text: str, code: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": text}
    if code:
        concept["coding"] = [{"system": RXNORM, "code": code}]
    return concept


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc-1.2", "Observation?patient=abc-1.2&_count=5"),
        ("1&_id=2", "Observation?patient=1%26_id%3D2&_count=5"),
        ("../x", "Observation?patient=..%2Fx&_count=5"),
        ("a b#c", "Observation?patient=a%20b%23c&_count=5"),
    ],
)
def test_context_values_are_url_encoded_so_they_cannot_change_the_query(value: str, expected: str) -> None:
    assert render("Observation?patient={{context.patientId}}&_count=5", {"patientId": value}) == expected


@pytest.mark.parametrize("context", [{}, {"patientId": ""}, {"patientId": 7}, {"patientId": ["p"]}])
def test_a_token_that_cannot_be_filled_means_the_data_is_unavailable(context: dict[str, Any]) -> None:
    with pytest.raises(DataUnavailable):
        render("Patient/{{context.patientId}}", context)


def test_only_context_tokens_are_filled() -> None:
    with pytest.raises(DataUnavailable):
        render("Practitioner/{{userPractitionerId}}", {"userPractitionerId": "x"})


@pytest.mark.parametrize(
    ("concept", "classes"),
    [
        (_drug("Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet", "562251"), {"penicillins"}),
        (_drug("some brand name", "723"), {"penicillins"}),  # by code alone
        (_drug("penicillin G"), {"penicillins"}),  # by name alone
        (_drug("Naproxen sodium 220 MG Oral Tablet", "849574"), {"aspirin and NSAIDs"}),
        (_drug("Acetaminophen 300 MG / Codeine Phosphate 30 MG Oral Tablet"), {"codeine and related opioids"}),
        (_drug("metformin hydrochloride 500 MG Oral Tablet", "860975"), set()),
        (_drug("Allergy to peanut (finding)"), set()),
        (_drug("Sulfamethoxazole / trimethoprim"), set()),
    ],
)
def test_drug_classes_are_found_by_rxnorm_code_or_ingredient_name(concept: dict[str, Any], classes: set[str]) -> None:
    assert classes_of(concept) == classes


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet", {"amoxicillin", "clavulanate"}),
        ("lisinopril 10 MG Oral Tablet", {"lisinopril"}),
        ("Hydrochlorothiazide 25 MG", {"hydrochlorothiazide"}),
        ("Clonazepam [Klonopin]", {"clonazepam"}),
        ("NDA020800 0.3 ML Epinephrine 1 MG/ML Auto-Injector", set()),
    ],
)
def test_ingredient_names_are_the_leading_words_of_each_component(text: str, names: set[str]) -> None:
    assert ingredient_names(_drug(text)) == names


def test_a_long_summary_is_cut_below_140_characters() -> None:
    assert fit_summary("x" * 139) == "x" * 139
    cut = fit_summary("y" * 300)
    assert len(cut) == 139 and cut.endswith("…")


@pytest.mark.parametrize(
    ("card", "problem"),
    [
        ({"summary": "s" * 140}, "at most 139"),
        ({"indicator": "hard-stop"}, "indicator"),
        (
            {
                "suggestions": [
                    {
                        "label": "x",
                        "uuid": "u",
                        "actions": [{"type": "delete", "description": "d", "resourceId": "A/1"}],
                    }
                ]
            },
            "selectionBehavior",
        ),
        ({"selectionBehavior": "all"}, "selectionBehavior"),
        ({"source": {}}, "label"),
        ({"surprise": 1}, "Extra inputs"),
    ],
)
def test_a_card_that_breaks_the_spec_cannot_be_built(card: dict[str, Any], problem: str) -> None:
    base = {"uuid": "c1", "summary": "ok", "indicator": "info", "source": SOURCE}
    with pytest.raises(ValidationError, match=problem):
        Card.model_validate({**base, **card})


def test_actions_and_links_must_be_complete() -> None:
    with pytest.raises(ValidationError, match="resourceId"):
        Action(type="delete", description="d")
    with pytest.raises(ValidationError, match="carry a resource"):
        Action(type="create", description="d")
    with pytest.raises(ValidationError, match="smart links only"):
        Link(label="l", url="https://x.test", type="absolute", appContext="{}")


def test_fhir_authorization_needs_a_fhir_server_and_keeps_its_token_out_of_reprs() -> None:
    auth = {"access_token": "tok-SECRET", "token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "c"}
    with pytest.raises(ValidationError, match="without fhirServer"):
        HookRequest.model_validate(
            {"hook": "patient-view", "hookInstance": "h", "context": {}, "fhirAuthorization": auth}
        )
    request = HookRequest.model_validate(
        {
            "hook": "patient-view",
            "hookInstance": "h",
            "context": {},
            "fhirAuthorization": auth,
            "fhirServer": "https://f",
        }
    )
    assert "tok-SECRET" not in repr(request) and "tok-SECRET" not in str(request.model_dump())


def test_feedback_outcomes_are_consistent() -> None:
    stamp = "2026-01-01T00:00:00+00:00"
    FeedbackItem.model_validate({"card": "c", "outcome": "overridden", "outcomeTimestamp": stamp, "overrideReason": {}})
    with pytest.raises(ValidationError, match="no overrideReason"):
        FeedbackItem.model_validate(
            {"card": "c", "outcome": "accepted", "outcomeTimestamp": stamp, "overrideReason": {}}
        )


def test_trusted_clients_come_from_json_and_one_issuer_has_one_jwks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    probe = {"issuer": "https://localhost:9005", "jwks_url": "https://localhost:9005/.well-known/jwks.json"}
    monkeypatch.setenv("MOCKEHR_CDS_TRUSTED_CLIENTS", json.dumps([probe]))
    monkeypatch.setenv("MOCKEHR_CDS_FHIR_SERVERS", '["https://localhost:9002/fhir/"]')
    settings = CdsSettings(data_dir=tmp_path)
    assert [c.issuer for c in settings.clients] == ["https://localhost:9000", "https://localhost:9005"]
    assert settings.fhir_servers == ["https://localhost:9002/fhir"]
    twice = {**probe, "jwks_url": "https://localhost:9005/other.json"}
    with pytest.raises(ValidationError, match="two JWKS URLs"):
        CdsSettings(data_dir=tmp_path, trusted_clients=[probe, twice])


@pytest.mark.parametrize(
    "setting",
    [
        {"trusted_clients": [{"issuer": "https://x", "jwks_url": "http://x/jwks.json"}]},
        {"trusted_clients": [{"issuer": "https://x", "jwks_url": "https://x/jwks.json", "jku": "y"}]},
        {"ehr_jwks_url": "http://localhost:9000/.well-known/jwks.json"},
        {"fhir_servers": ["http://localhost:9002/fhir"]},
        {"fhir_servers": ["https://user@localhost:9002/fhir"]},
        {"smart_launch_url": "javascript:alert(1)"},
    ],
)
def test_unsafe_urls_are_refused_in_settings(tmp_path: Path, setting: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CdsSettings(data_dir=tmp_path, **setting)
