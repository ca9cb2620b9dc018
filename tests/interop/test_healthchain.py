"""HealthChain (PyPI, pinned in healthchain-requirements.txt) as a real CDS Service: its own venv,
uvicorn over TLS with a certificate from `mockehr ca issue`, registered with `mockehr services add`,
called through `mockehr hook`, and probed with `mockehr probe` (docs/interop.md)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest

from mockehr.seed import generate
from tests.e2e.conftest import UpProcess, free_base_port, start_up
from tests.interop.pinned_venv import ROOT, pinned_venv

pytestmark = pytest.mark.e2e

REQUIREMENTS = Path(__file__).with_name("healthchain-requirements.txt")


@dataclass
class HealthChain:
    up: UpProcess
    discovery: str


def _cli(up: UpProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mockehr", *args, "--data-dir", str(up.data_dir), "--base-port", str(up.base_port)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_discovery(url: str, ca: Path, service: subprocess.Popen[str], log: Path, timeout: float = 60.0) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise AssertionError(f"the HealthChain service exited {service.returncode} (its log: {log})")
        try:
            if httpx.get(url, verify=ctx, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"HealthChain discovery {url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def healthchain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthChain]:
    python = pinned_venv("healthchain", REQUIREMENTS)
    data_dir = tmp_path_factory.mktemp("healthchain-stack") / ".mockehr"
    up = start_up(data_dir, free_base_port(), "--patients", "3")
    service: subprocess.Popen[str] | None = None
    log: TextIO | None = None
    try:
        up.wait_for("Ctrl-C stops every service.")
        certs = tmp_path_factory.mktemp("healthchain-certs")
        issued = _cli(up, "ca", "issue", "localhost", "--out", str(certs))
        assert issued.returncode == 0, issued.stdout + issued.stderr
        port = _free_port()
        # A file, not a pipe: a pipe nobody reads would block the service once its buffer is full.
        log = (certs / "healthchain.log").open("w")
        service = subprocess.Popen(
            [
                *(str(python), "-m", "uvicorn", "tests.interop.healthchain_service:app"),
                *("--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", "5"),
                *("--ssl-certfile", str(certs / "localhost.pem"), "--ssl-keyfile", str(certs / "localhost-key.pem")),
            ],
            cwd=ROOT,
            env={**os.environ, "HEALTHCHAIN_FHIR_CA": str(data_dir / "ca.pem"), "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        discovery = f"https://localhost:{port}/cds-services"
        _wait_for_discovery(discovery, data_dir / "ca.pem", service, certs / "healthchain.log")
        yield HealthChain(up, discovery)
    finally:
        if log is not None:
            log.close()
        if service is not None:
            service.terminate()
            try:
                service.wait(20)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait(10)
        up.stop()


def _ehr(up: UpProcess, path: str) -> dict[str, Any]:
    token = (up.data_dir / "admin-token").read_text().strip()
    ctx = ssl.create_default_context(cafile=str(up.data_dir / "ca.pem"))
    url = f"https://localhost:{up.base_port}{path}"
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, verify=ctx, timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _demo_user_and_patient(up: UpProcess) -> tuple[str, str, str]:
    """A demo login, one of their patients, and that patient's name as the seeded data has it
    (`mockehr up` loads `seed.generate(3, 1)`): the service can only know it by reading FHIR."""
    users = json.loads((up.data_dir / "demo-users.json").read_text())
    user = next(iter(users.values()))
    patient = str(user["patients"][0])
    (name,) = [
        e["resource"]["name"][0]["text"]
        for e in generate(3, 1).bundle["entry"]
        if e["resource"]["resourceType"] == "Patient" and e["resource"]["id"] == patient
    ]
    return str(user["fhirUser"]), patient, str(name)


def _draft_order(patient: str) -> str:
    order = {
        "resourceType": "MedicationRequest",
        "id": "healthchain-draft-1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient}"},
        "medicationCodeableConcept": {"text": "amoxicillin 500 mg"},
    }
    return json.dumps({"draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}})


def test_healthchain_answers_patient_view_and_order_sign_with_cards_about_the_patient_it_read_with_its_token(
    healthchain: HealthChain,
) -> None:
    up = healthchain.up
    # No prefetch in HealthChain's discovery: the FHIR read it needs is approved as a scope.
    added = _cli(up, "services", "add", healthchain.discovery, "--scope", "patient/Patient.rs", "--json")
    assert added.returncode == 0, added.stdout + added.stderr
    user, patient, name = _demo_user_and_patient(up)

    expected = {
        "patient-view": ("healthchain-patient-view", "info", f"HealthChain read {name}"),
        "order-sign": ("healthchain-order-sign", "warning", f"HealthChain checked the order for {name}"),
    }
    for hook, (service_id, indicator, summary) in expected.items():
        extra = ("--context", _draft_order(patient)) if hook == "order-sign" else ()
        result = _cli(up, "hook", hook, "--user", user, "--patient", patient, "--service", service_id, "--json", *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        fired = json.loads(result.stdout)
        (answer,) = fired["services"]
        assert (answer["serviceId"], answer["status"]) == (service_id, "ok"), answer
        (card,) = answer["cards"]
        assert (card["summary"], card["indicator"], card["summaryHtml"]) == (summary, indicator, summary)

        (exchange,) = _ehr(up, f"/api/exchanges/{fired['hookInstance']}")["services"]
        # What was sent: the approved scope only, for this patient; what came back: the card, kept as sent.
        assert exchange["tokenScope"] == exchange["request"]["fhirAuthorization"]["scope"] == "patient/Patient.rs"
        assert exchange["request"]["fhirAuthorization"]["patient"] == patient
        assert exchange["request"]["fhirAuthorization"]["access_token"] == "[redacted]"
        assert exchange["response"]["cards"][0]["summary"] == summary
        assert (exchange["httpStatus"], exchange["dropped"]) == (200, [])
        # The token was revoked once the service answered: the revoke phase ran, and a failed
        # revocation would have left a note (ehr.invoke._revoke).
        assert exchange["timings"]["revoke_ms"] is not None
        assert exchange["notes"] == []


ACCEPTED_FORMS = {"control", "aud-array"}  # correctly signed requests: accepted, as they should be
NOTHING_REFUSED = {"leak-reason", "leak-stack-trace", "leak-token-echo"}  # inspect refusals; there were none


def test_mockehr_probe_finds_that_healthchain_verifies_no_jwt(healthchain: HealthChain) -> None:
    up = healthchain.up
    result = _cli(up, "probe", healthchain.discovery, "--json", "--timeout", "10")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["passed"] is False

    by_endpoint: dict[str, dict[str, str]] = {}
    for row in report["results"]:
        by_endpoint.setdefault(row["endpoint"], {})[row["check"]] = row["verdict"]
    assert set(by_endpoint) == {
        "discovery",
        "healthchain-patient-view",
        "healthchain-order-sign",
        "healthchain-patient-view feedback",
        "healthchain-order-sign feedback",
    }
    # Discovery and both services answer every request, signed or not: each check that sends a bad
    # or missing JWT fails (27 at discovery, 28 at each service, which also gets aud-discovery).
    for endpoint in ("discovery", "healthchain-patient-view", "healthchain-order-sign"):
        verdicts = by_endpoint[endpoint]
        expected = {
            check: "pass" if check in ACCEPTED_FORMS else "inconclusive" if check in NOTHING_REFUSED else "fail"
            for check in verdicts
        }
        assert verdicts == expected, endpoint
        failed = sum(v == "fail" for v in verdicts.values())
        assert failed == (27 if endpoint == "discovery" else 28), endpoint
    # HealthChain serves no feedback endpoint: the correctly signed feedback POST gets 404, so the
    # probe reports both feedback endpoints as not served and runs none of their checks.
    feedback = ["healthchain-patient-view feedback", "healthchain-order-sign feedback"]
    assert report["not_served"] == feedback
    for endpoint in feedback:
        assert set(by_endpoint[endpoint].values()) == {"skipped"}, endpoint
        (control,) = [r for r in report["results"] if r["endpoint"] == endpoint and r["check"] == "control"]
        assert control["detail"].startswith("not served: ") and "404" in control["detail"]
    served = [e for e in by_endpoint if e not in feedback]
    assert report["score"]["run"] == sum(len(by_endpoint[e]) for e in served)
    assert report["score"]["skipped"] == sum(len(by_endpoint[e]) for e in feedback)
