"""Verdicts on responses, leak detection, the synthetic CDS Hooks requests and the HTML report."""

from __future__ import annotations

import json
import time

import pytest

from mockehr.probe import judge
from mockehr.probe.cds_requests import PATIENT_ID, SYNTHETIC, prefetch, service_request
from mockehr.probe.checks import CHECKS, by_id
from mockehr.probe.judge import Exchange
from mockehr.probe.report import as_html, as_json
from mockehr.probe.runner import Report, Result

CARDS = json.dumps({"cards": [{"summary": "s", "indicator": "info", "source": {"label": "l"}}]})


@pytest.mark.parametrize(
    ("exchange", "verdict"),
    [
        (Exchange(401), "pass"),
        (Exchange(403, body='{"error":"forbidden"}'), "pass"),
        (Exchange(401, body=CARDS), "fail"),
        (Exchange(200, body=CARDS), "fail"),
        (Exchange(204), "fail"),
        (Exchange(302), "fail"),
        (Exchange(400), "fail"),
        (Exchange(412), "fail"),
        (Exchange(500), "fail"),
        (Exchange(429), "inconclusive"),
        (Exchange(None, error="ReadTimeout"), "inconclusive"),
    ],
)
def test_a_refusal_is_a_401_or_403_without_cards_and_nothing_else(exchange: Exchange, verdict: str) -> None:
    assert judge.judge_refusal(exchange)[0] == verdict


def test_an_acceptance_is_any_2xx_or_a_412_and_nothing_else() -> None:
    assert judge.judge_acceptance(Exchange(200))[0] == "pass"
    assert judge.judge_acceptance(Exchange(412))[0] == "pass"  # authenticated, then lacked data
    assert judge.judge_acceptance(Exchange(401))[0] == "fail"
    assert judge.judge_acceptance(Exchange(None, error="ConnectError"))[0] == "fail"


@pytest.mark.parametrize(
    ("exchange", "leaks"),
    [
        (Exchange(401), False),
        (Exchange(401, body='{"error":"unauthorized"}'), False),
        (Exchange(401, body="Not authenticated"), False),
        (Exchange(401, www_authenticate='Bearer error="invalid_token"'), False),
        (Exchange(401, body='{"detail":"Token expired"}'), True),
        (Exchange(401, body="invalid signature"), True),
        (Exchange(401, body='{"error":"aud mismatch"}'), True),
        (Exchange(401, www_authenticate='Bearer error="invalid_token", error_description="bad issuer"'), True),
    ],
)
def test_a_refusal_that_names_what_failed_leaks_a_reason(exchange: Exchange, leaks: bool) -> None:
    assert (judge.leaked_reason(exchange) is not None) is leaks


@pytest.mark.parametrize(
    "body",
    [
        'Traceback (most recent call last):\n  File "/app/main.py", line 3, in <module>',
        "java.lang.IllegalStateException\n\tat com.example.Auth.verify(Auth.java:42)",
        "Error: bad\n    at verify (/srv/auth.js:10:5)",
    ],
)
def test_stack_traces_of_common_runtimes_are_recognised(body: str) -> None:
    assert judge.stack_trace(Exchange(500, body=body)) is not None
    assert judge.stack_trace(Exchange(401, body="Unauthorized")) is None


def test_a_response_repeating_the_token_or_its_jti_echoes_it() -> None:
    token = "eyJhbGciOiJFUzM4NCJ9.eyJqdGkiOiJhYmNkZWZnaGlqa2xtbm9wcXJzdHV2In0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    parts = judge.token_parts(f"Bearer {token}")

    assert "abcdefghijklmnopqrstuv" in parts  # the jti
    assert judge.echoed(Exchange(401, body=f"bad token {token}"), parts) == "the response repeats the token"
    assert judge.echoed(Exchange(401, body='{"jti":"abcdefghijklmnopqrstuv"}'), parts) is not None
    assert judge.echoed(Exchange(401, body="Unauthorized"), parts) is None


def test_prefetch_templates_are_answered_from_synthetic_resources() -> None:
    answers = prefetch(
        {
            "patient": "Patient/{{context.patientId}}",
            "user": "{{context.userId}}",
            "other": "Location/x",
            "labs": "Observation?patient={{context.patientId}}&category=laboratory",
            "unknown": "Patient/{{context.somethingElse}}",
        }
    )

    assert answers["patient"] == SYNTHETIC[f"Patient/{PATIENT_ID}"]
    assert answers["user"]["resourceType"] == "Practitioner"
    assert answers["other"] is None  # a read that finds nothing
    assert answers["labs"] == {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
    assert "unknown" not in answers  # not satisfiable: omitted


def test_each_service_request_has_a_new_hook_instance_and_no_fhir_authorization() -> None:
    service = {"hook": "order-sign", "id": "x", "prefetch": {"p": "Patient/{{context.patientId}}"}}
    first, second = service_request(service), service_request(service)

    assert first["hookInstance"] != second["hookInstance"]
    assert first["context"]["draftOrders"]["resourceType"] == "Bundle"
    assert "fhirAuthorization" not in first and "fhirServer" not in first


def test_the_html_report_escapes_everything_the_service_controls_and_loads_nothing() -> None:
    evil = '<script>alert("x")</script>'
    report = Report(
        target=f"https://cds.test/{evil}", issuer="https://probe.test", jwks_url="j", started_at=time.time()
    )
    report.results.append(Result(evil, "service", f"https://cds.test/{evil}", by_id("alg-none"), "fail", evil))

    page = as_html(report)

    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert "default-src 'none'" in page
    assert "http://" not in page.replace("http-equiv", "")
    assert as_json(report)["results"][0]["detail"] == evil


def test_every_check_is_named_explained_and_referenced_once() -> None:
    ids = [c.id for c in CHECKS]
    assert len(ids) == len(set(ids))
    for check in CHECKS:
        assert check.title and check.explanation and check.reference
        assert "RFC" in check.reference or "CDS Hooks" in check.reference


def test_the_terminal_table_shows_service_controlled_text_without_markup_or_escape_sequences() -> None:
    import io

    from rich.console import Console

    from mockehr.probe.report import print_table

    evil = "svc\x1b[2J[bold red]x[/]"
    report = Report(target="https://cds.test/cds-services", issuer="https://probe.test", jwks_url="j", started_at=0)
    report.results.append(Result(evil, "service", "u", by_id("alg-none"), "fail", evil))
    for per_endpoint in (False, True):
        buffer = io.StringIO()
        print_table(Console(file=buffer, width=300, color_system=None), report, per_endpoint=per_endpoint)
        text = buffer.getvalue()

        assert "\x1b" not in text
        assert "[bold red]x[/]" in text
        assert "0/1 checks passed, 1 failed, 0 inconclusive" in text
