"""CDS Hooks through the whole stack (`mockehr up` on loopback, real TLS): the example CDS
Service is allow-listed by `up`, patient-view for a demo user returns its cards through
`POST /api/hooks/patient-view` and through `mockehr hook`, the exchanges are logged, a
suggestion is applied as the user, and a disabled service is never called again."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import UpProcess

pytestmark = pytest.mark.e2e


def _tls(up: UpProcess) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(up.data_dir / "ca.pem"))
    return ctx


def _ehr(up: UpProcess, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    token = (up.data_dir / "admin-token").read_text().strip()
    return httpx.request(
        method,
        f"https://localhost:{up.base_port}{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        verify=_tls(up),
        timeout=30,
    )


def _cli(up: UpProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mockehr", *args, "--data-dir", str(up.data_dir), "--base-port", str(up.base_port)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _demo_user(up: UpProcess) -> tuple[str, str]:
    users = json.loads((up.data_dir / "demo-users.json").read_text())
    first = next(iter(users.values()))
    return str(first["fhirUser"]), str(first["patients"][0])


def test_up_allow_lists_the_example_cds_service_with_its_prefetch(stack: UpProcess) -> None:
    assert "example CDS Service registered" in stack.output
    result = _cli(stack, "services", "list", "--json")
    assert result.returncode == 0, result.stderr
    services = {s["id"]: s for s in json.loads(result.stdout)}
    discovery = f"https://localhost:{stack.base_port + 3}/cds-services"
    assert {"patient-greeting", "abnormal-results", "medication-safety"} <= set(services)
    greeting = services["patient-greeting"]
    assert (greeting["discoveryUrl"], greeting["clientId"], greeting["enabled"]) == (discovery, "cds-example", True)
    assert greeting["approvedPrefetch"] == greeting["announcedPrefetch"] != {}
    again = _cli(stack, "services", "add", discovery, "--approve-all-prefetch", "--keep-existing")
    assert again.returncode == 0, again.stderr
    assert "already registered; nothing changed" in again.stdout


def test_patient_view_for_a_demo_user_returns_the_example_services_cards(stack: UpProcess) -> None:
    user, patient = _demo_user(stack)
    response = _ehr(stack, "POST", "/api/hooks/patient-view", {"userId": user, "patientId": patient})
    assert response.status_code == 200, response.text
    body = response.json()
    results = {s["serviceId"]: s for s in body["services"]}
    assert results["patient-greeting"]["status"] == "ok", results
    (greeting,) = results["patient-greeting"]["cards"]
    assert greeting["summary"].startswith("Now seeing:")
    assert results["abnormal-results"]["status"] == "ok", results

    listed = _ehr(stack, "GET", "/api/exchanges").json()["exchanges"]
    assert {e["serviceId"] for e in listed if e["hookInstance"] == body["hookInstance"]} == set(results)
    detail = _ehr(stack, "GET", f"/api/exchanges/{body['hookInstance']}").json()
    for service in detail["services"]:
        assert service["request"]["fhirAuthorization"]["access_token"] == "[redacted]"
        assert service["request"]["fhirAuthorization"]["subject"] == "cds-example"
        assert service["httpStatus"] == 200


def test_mockehr_hook_prints_the_cards_and_the_request(stack: UpProcess) -> None:
    user, patient = _demo_user(stack)
    as_json = _cli(stack, "hook", "patient-view", "--user", user, "--patient", patient, "--json", "--show-request")
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    result = json.loads(as_json.stdout)
    assert any(s["serviceId"] == "patient-greeting" and s["cards"] for s in result["services"])
    assert all(
        s["request"]["fhirAuthorization"]["access_token"] == "[redacted]" for s in result["exchange"]["services"]
    )
    table = _cli(stack, "hook", "patient-view", "--user", user, "--patient", patient, "--service", "patient-greeting")
    assert table.returncode == 0, table.stdout + table.stderr
    assert "Now seeing:" in table.stdout and "patient-greeting" in table.stdout
    refused = _cli(stack, "hook", "patient-view", "--user", user, "--patient", "1&_id=2")
    assert refused.returncode == 2 and "patientId" in refused.stderr


def test_accepting_a_suggestion_writes_it_as_the_user_and_sends_feedback(stack: UpProcess) -> None:
    users = json.loads((stack.data_dir / "demo-users.json").read_text())
    found: tuple[str, dict[str, Any], dict[str, Any]] | None = None
    for user in users.values():
        for patient in user["patients"]:
            body = {"userId": user["fhirUser"], "patientId": patient, "services": ["abnormal-results"]}
            response = _ehr(stack, "POST", "/api/hooks/patient-view", body).json()
            for card in response["services"][0]["cards"]:
                if card.get("suggestions"):
                    found = (response["hookInstance"], card, card["suggestions"][0])
                    break
            if found:
                break
        if found:
            break
    assert found is not None, "no demo patient got a card with a suggestion"
    hook_instance, card, suggestion = found
    accept = {
        "hookInstance": hook_instance,
        "serviceId": "abnormal-results",
        "cardUuid": card["uuid"],
        "suggestionUuid": suggestion["uuid"],
    }
    response = _ehr(stack, "POST", "/api/suggestions/accept", accept)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["outcome"] == "accepted" and result["feedback"]["delivered"] is True
    assert result["transaction"] and all(e["status"].startswith("201") for e in result["transaction"])
    assert _ehr(stack, "POST", "/api/suggestions/accept", accept).status_code == 409


def test_a_disabled_service_is_never_called(stack: UpProcess) -> None:
    user, patient = _demo_user(stack)
    result = _cli(stack, "services", "disable", "patient-greeting")
    assert result.returncode == 0, result.stderr
    before = {e["id"] for e in _ehr(stack, "GET", "/api/exchanges?limit=500").json()["exchanges"]}
    response = _ehr(stack, "POST", "/api/hooks/patient-view", {"userId": user, "patientId": patient})
    assert [s["serviceId"] for s in response.json()["services"]] == ["abnormal-results"]
    after = _ehr(stack, "GET", "/api/exchanges?limit=500").json()["exchanges"]
    assert [e["serviceId"] for e in after if e["id"] not in before] == ["abnormal-results"]
    named = _cli(stack, "hook", "patient-view", "--user", user, "--patient", patient, "--service", "patient-greeting")
    assert named.returncode == 2
    assert "not an enabled CDS Service" in named.stderr
