"""`mockehr services` and `mockehr hook` fail clearly (one line, exit 2) before or without a
running EHR; the happy paths run against the whole stack in tests/e2e/test_cds_hooks.py."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from common.tls import ensure_ca
from mockehr.cli import app

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ensure_ca(tmp_path)
    (tmp_path / "admin-token").write_text("a-token\n")
    return tmp_path


def test_the_commands_say_when_the_ehr_is_not_running(data_dir: Path) -> None:
    port = str(_free_port())
    for args in (
        ("services", "list"),
        ("services", "add", "https://localhost:9/cds-services", "--approve-all-prefetch"),
        ("services", "disable", "x"),
        ("services", "remove", "x"),
        ("hook", "patient-view", "--user", "Practitioner/p", "--patient", "p1"),
    ):
        code, _, err = _invoke(*args, "--data-dir", str(data_dir), "--base-port", port)
        assert code == 2, args
        assert f"cannot reach the EHR at https://localhost:{port}" in err
        assert "Traceback" not in err


def test_without_an_admin_token_nothing_is_sent(tmp_path: Path) -> None:
    ensure_ca(tmp_path)
    code, _, err = _invoke("services", "list", "--data-dir", str(tmp_path), "--base-port", str(_free_port()))
    assert code == 2
    assert f"no admin token at {tmp_path / 'admin-token'}" in err


def test_mutual_tls_needs_both_the_certificate_and_the_key(data_dir: Path) -> None:
    cert = data_dir / "svc.pem"
    cert.write_text("x")
    code, _, err = _invoke(
        "services", "add", "https://localhost/cds-services", "--client-cert", str(cert), "--data-dir", str(data_dir)
    )
    assert code == 2 and "--client-cert and --client-key go together" in err
    code, _, err = _invoke(
        "services",
        "add",
        "https://localhost/cds-services",
        "--client-cert",
        str(cert),
        "--client-key",
        str(data_dir / "missing-key.pem"),
        "--data-dir",
        str(data_dir),
    )
    assert code == 2 and "no such file" in err


def test_hook_context_must_be_a_json_object(data_dir: Path) -> None:
    for context in ("[1, 2]", "{broken"):
        code, _, err = _invoke(
            "hook",
            "order-sign",
            "--user",
            "Practitioner/p",
            "--patient",
            "p1",
            "--context",
            context,
            "--data-dir",
            str(data_dir),
        )
        assert code == 2 and "--context must be a JSON object" in err


def test_an_unknown_hook_is_refused_naming_the_valid_ones_before_anything_is_sent(data_dir: Path) -> None:
    code, _, err = _invoke(
        "hook", "patient-veiw", "--user", "Practitioner/p", "--patient", "p1", "--data-dir", str(data_dir)
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "error: unknown hook 'patient-veiw': one of patient-view, order-select, order-sign, order-dispatch, "
        "encounter-start, encounter-discharge, appointment-book"
    ]


def test_a_login_that_is_not_a_demo_user_is_refused_naming_the_logins(data_dir: Path) -> None:
    (data_dir / "demo-users.json").write_text(
        '{"dr.alvarez": {"fhirUser": "Practitioner/a", "password": "x", "patients": ["p1"]}}'
    )
    port = str(_free_port())
    code, _, err = _invoke(
        "hook",
        "patient-view",
        "--user",
        "dr.nobody",
        "--patient",
        "p1",
        "--data-dir",
        str(data_dir),
        "--base-port",
        port,
    )
    assert code == 2
    assert "--user 'dr.nobody' is neither Practitioner/<id> nor a login" in err and "(logins: dr.alvarez)" in err
    # A known login and Patient/<id> get as far as the EHR (not running here).
    code, _, err = _invoke(
        "hook",
        "patient-view",
        "--user",
        "dr.alvarez",
        "--patient",
        "Patient/p1",
        "--data-dir",
        str(data_dir),
        "--base-port",
        port,
    )
    assert code == 2 and f"cannot reach the EHR at https://localhost:{port}" in err
    code, _, err = _invoke(
        "hook", "patient-view", "--user", "dr.alvarez", "--patient", "Encounter/p1", "--data-dir", str(data_dir)
    )
    assert code == 2 and "give <id> or Patient/<id>" in err


def test_a_service_scope_must_name_the_service_and_the_scope(data_dir: Path) -> None:
    for value in ("patient/Observation.rs", "vitals=", "=patient/Observation.rs"):
        code, _, err = _invoke(
            "services", "add", "https://localhost/cds-services", "--service-scope", value, "--data-dir", str(data_dir)
        )
        assert code == 2, value
        assert err.strip().splitlines() == [
            f"error: --service-scope {value!r}: give ID=SCOPE, e.g. vitals=patient/Observation.rs"
        ]


def test_a_registered_service_without_scope_is_said_to_get_no_fhir_authorization_in_one_line() -> None:
    from io import StringIO

    from rich.console import Console

    from mockehr.cds import print_registration

    def service(cds_id: str, scope: str) -> dict[str, Any]:
        return {
            "id": cds_id, "cdsId": cds_id, "hook": "patient-view", "url": f"https://svc/cds-services/{cds_id}",
            "enabled": True, "approvedPrefetch": {}, "scope": scope, "clientId": "cds-svc",
        }  # fmt: skip

    text = StringIO()
    print_registration(
        Console(file=text, width=200), {"services": [service("fetcher", ""), service("reader", "patient/Patient.rs")]}
    )
    said = [line for line in text.getvalue().splitlines() if "fhirAuthorization" in line and "│" not in line]
    assert said == [
        "fetcher: no scope approved, so it is called without fhirAuthorization "
        "(approve one with --service-scope fetcher=SCOPE)"
    ]
