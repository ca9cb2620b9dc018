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
from typing import Any

import httpx
import pytest

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


def _wait_for_discovery(url: str, ca: Path, service: subprocess.Popen[str], timeout: float = 60.0) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise AssertionError(f"the HealthChain service exited {service.returncode}:\n{service.communicate()[0]}")
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
    try:
        up.wait_for("Ctrl-C stops every service.")
        certs = tmp_path_factory.mktemp("healthchain-certs")
        issued = _cli(up, "ca", "issue", "localhost", "--out", str(certs))
        assert issued.returncode == 0, issued.stdout + issued.stderr
        port = _free_port()
        service = subprocess.Popen(
            [
                *(str(python), "-m", "uvicorn", "tests.interop.healthchain_service:app"),
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--ssl-certfile", str(certs / "localhost.pem"), "--ssl-keyfile", str(certs / "localhost-key.pem")),
            ],
            cwd=ROOT,
            env={**os.environ, "HEALTHCHAIN_FHIR_CA": str(data_dir / "ca.pem"), "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        discovery = f"https://localhost:{port}/cds-services"
        _wait_for_discovery(discovery, data_dir / "ca.pem", service)
        yield HealthChain(up, discovery)
    finally:
        if service is not None:
            service.terminate()
            service.wait(20)
        up.stop()


def _demo_user_and_patient(up: UpProcess) -> tuple[str, str, str]:
    """A demo login, one of their patients, and that patient's name as the FHIR server has it."""
    users = json.loads((up.data_dir / "demo-users.json").read_text())
    user = next(iter(users.values()))
    return str(user["fhirUser"]), str(user["patients"][0]), ""


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
    added = _cli(up, "services", "add", healthchain.discovery, "--scope", "patient/Patient.rs", "--json")
    assert added.returncode == 0, added.stdout + added.stderr
    user, patient, _ = _demo_user_and_patient(up)
    print(added.stdout)

    fired: dict[str, Any] = {}
    for hook, service_id, extra in (
        ("patient-view", "healthchain-patient-view", ()),
        ("order-sign", "healthchain-order-sign", ("--context", _draft_order(patient))),
    ):
        result = _cli(up, "hook", hook, "--user", user, "--patient", patient, "--service", service_id, "--json", *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        fired[hook] = json.loads(result.stdout)
    print(json.dumps(fired, indent=1))
    raise AssertionError("look")
