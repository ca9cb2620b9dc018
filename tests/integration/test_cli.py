"""The `mockehr` commands that do not start the stack, run through typer on both databases."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select
from typer.testing import CliRunner

from authserver.models import UserRow
from authserver.passwords import verify_password
from common.db import make_engine, make_sessionmaker
from common.errors import KeyDecryptionError
from common.keys import KeyStore
from common.tls import ensure_ca
from fhirserver import storage
from fhirserver.models import ResourceRow
from mockehr.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _initialised(tmp_path: Path) -> None:
    """The tests use tmp_path as the data dir: give it the CA `init` would (commands other than
    `up` and `init` refuse a data dir those have not made; tests/integration/test_cli_data_dir.py)."""
    ensure_ca(tmp_path)


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


async def _users_and_panel(url: str) -> tuple[list[UserRow], dict[str, list[str]]]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session:
            users = list((await session.execute(select(UserRow))).scalars())
            panels = {
                u.fhir_user: await storage.referencing(
                    session, "Practitioner", u.fhir_user.split("/")[1], "Patient", ("generalPractitioner",)
                )
                for u in users
            }
        return users, panels
    finally:
        await engine.dispose()


def test_seed_creates_logins_with_argon2_hashes_and_disjoint_panels(tmp_path: Path, database_url: str) -> None:
    code, out, err = _invoke("seed", "--data-dir", str(tmp_path), "--db", database_url, "--patients", "9")
    assert code == 0, err
    assert "seeded 9 patients, 3 practitioners" in out
    demo = json.loads((tmp_path / "demo-users.json").read_text())
    assert (tmp_path / "demo-users.json").stat().st_mode & 0o777 == 0o600
    users, panels = asyncio.run(_users_and_panel(database_url))
    assert {u.username for u in users} == set(demo)
    for user in users:
        assert user.password_hash.startswith("$argon2id$")
        assert demo[user.username]["password"] not in user.password_hash
        assert verify_password(user.password_hash, demo[user.username]["password"])
        assert not verify_password(user.password_hash, "wrong")
        assert sorted(panels[user.fhir_user]) == sorted(demo[user.username]["patients"])
    all_patients = [p for ids in panels.values() for p in ids]
    assert len(all_patients) == len(set(all_patients)) == 9


def test_seeding_twice_keeps_the_passwords(tmp_path: Path, database_url: str) -> None:
    assert _invoke("seed", "--data-dir", str(tmp_path), "--db", database_url, "--patients", "3")[0] == 0
    first = json.loads((tmp_path / "demo-users.json").read_text())
    assert _invoke("seed", "--data-dir", str(tmp_path), "--db", database_url, "--patients", "3")[0] == 0
    assert json.loads((tmp_path / "demo-users.json").read_text()) == first


def test_load_reports_each_file_and_exits_non_zero_when_one_fails(
    tmp_path: Path, database_url: str, fixtures_dir: Path
) -> None:
    practitioners = next((fixtures_dir / "synthea-r4").glob("practitionerInformation*.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceType": "Bundle", "type": "batch", "entry": []}))
    code, out, _ = _invoke(
        "load", str(practitioners), str(bad), "--data-dir", str(tmp_path), "--db", database_url, "--json"
    )
    assert code == 1
    results = json.loads(out)
    assert [r["ok"] for r in results] == [True, False]
    assert results[0]["created"] == 102
    assert "Bundle.type must be 'transaction'" in results[1]["message"]

    async def count() -> int:
        engine = make_engine(database_url)
        try:
            async with make_sessionmaker(engine)() as session:
                return len((await session.execute(select(ResourceRow.id))).all())
        finally:
            await engine.dispose()

    assert asyncio.run(count()) == 102


def test_keys_rotate_refuses_an_unknown_service_in_one_line(tmp_path: Path) -> None:
    code, _, err = _invoke("keys", "rotate", "fhirserver", "--data-dir", str(tmp_path))
    assert code == 2
    assert err.strip().splitlines() == ["error: unknown service 'fhirserver': one of authserver, ehr"]


def test_keys_list_shows_each_key_once_rotated(tmp_path: Path, database_url: str) -> None:
    assert _invoke("keys", "rotate", "authserver", "--data-dir", str(tmp_path), "--db", database_url)[0] == 0
    assert (
        _invoke("keys", "rotate", "authserver", "--data-dir", str(tmp_path), "--db", database_url, "--alg", "RS384")[0]
        == 0
    )
    code, out, _ = _invoke("keys", "list", "--json", "--data-dir", str(tmp_path), "--db", database_url)
    assert code == 0
    keys = json.loads(out)
    assert [(k["service"], k["alg"], k["status"]) for k in keys] == [
        ("authserver", "ES384", "retiring"),
        ("authserver", "RS384", "active"),
    ]
    assert keys[0]["publish_until"] - keys[0]["created_at"] >= 340


def test_ca_issue_writes_a_certificate_for_the_users_own_service(tmp_path: Path) -> None:
    data, out_dir = tmp_path / "data", tmp_path / "certs"
    ensure_ca(data)
    code, out, err = _invoke("ca", "issue", "my-cds.local", "127.0.0.1", "--data-dir", str(data), "--out", str(out_dir))
    assert code == 0, err
    cert = x509.load_pem_x509_certificate((out_dir / "my-cds.local.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((data / "ca.pem").read_bytes())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["my-cds.local"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert (out_dir / "my-cds.local-key.pem").stat().st_mode & 0o777 == 0o600
    code, out, _ = _invoke("ca", "path", "--data-dir", str(data))
    assert out.strip() == str((data / "ca.pem").resolve())


def test_keys_rotate_uses_the_configured_key_encryption_key_not_a_new_file(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kek = base64.urlsafe_b64encode(b"\x07" * 32).decode()
    monkeypatch.setenv("MOCKEHR_KEY_ENCRYPTION_KEY", kek)
    code, _, err = _invoke("keys", "rotate", "ehr", "--data-dir", str(tmp_path), "--db", database_url)
    assert code == 0, err
    assert not (tmp_path / "kek").exists()

    async def signer_kid(key: bytes) -> str:
        engine = make_engine(database_url)
        try:
            store = KeyStore(make_sessionmaker(engine), "ehr", key, refresh_seconds=1)
            return (await store.signer()).kid
        finally:
            await engine.dispose()

    assert asyncio.run(signer_kid(b"\x07" * 32))
    with pytest.raises(KeyDecryptionError):
        asyncio.run(signer_kid(b"\x08" * 32))


def test_clients_add_list_and_disable_a_cds_service(tmp_path: Path, database_url: str) -> None:
    base = ["--data-dir", str(tmp_path), "--db", database_url]
    code, _out, err = _invoke(
        "clients",
        "add",
        "my-cds",
        "--kind",
        "cds-service",
        "--scope",
        "patient/Observation.rs",
        "--scope",
        "patient/Patient.r",
        *base,
    )
    assert code == 0, err
    listed = {c["client_id"]: c for c in json.loads(_invoke("clients", "list", "--json", *base)[1])}
    assert listed["my-cds"]["scope"] == "patient/Observation.rs patient/Patient.r"
    assert listed["my-cds"]["auth_method"] == "none" and listed["my-cds"]["active"] is True
    assert _invoke("clients", "disable", "my-cds", *base)[0] == 0
    listed = {c["client_id"]: c for c in json.loads(_invoke("clients", "list", "--json", *base)[1])}
    assert listed["my-cds"]["active"] is False
    code, _, err = _invoke("clients", "disable", "nobody", *base)
    assert code == 2 and "no client 'nobody'" in err


def test_clients_add_refuses_an_unsafe_registration_in_one_line(tmp_path: Path, database_url: str) -> None:
    base = ["--data-dir", str(tmp_path), "--db", database_url]
    code, _, err = _invoke(
        "clients",
        "add",
        "b",
        "--kind",
        "backend",
        "--scope",
        "patient/*.rs",
        "--jwks-uri",
        "https://b.test/jwks",
        *base,
    )
    assert code == 2
    assert err.strip().splitlines() == ["error: backend clients are pre-authorised for system/ scopes only"]
    code, _, err = _invoke("clients", "add", "x", "--kind", "backend", "--jwks-uri", "http://b.test/jwks", *base)
    assert code == 2 and "refusing non-https URL" in err


def test_init_registers_the_ehr_and_the_example_service_with_compose_names(tmp_path: Path, database_url: str) -> None:
    code, _, err = _invoke(
        "init", "--data-dir", str(tmp_path), "--db", database_url, "--patients", "2", "--compose-names"
    )
    assert code == 0, err
    listed = {
        c["client_id"]: c
        for c in json.loads(_invoke("clients", "list", "--json", "--data-dir", str(tmp_path), "--db", database_url)[1])
    }
    assert listed["ehr"]["first_party"] is True and listed["ehr"]["kind"] == "ehr"
    assert listed["ehr"]["jwks_uri"] == "https://ehr.localhost:9000/.well-known/jwks.json"
    assert listed["cds-example"]["kind"] == "cds-service" and "patient/Observation.rs" in listed["cds-example"]["scope"]
    # The certificate covers the names a browser on the host and the compose network both resolve.
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "server.pem").read_bytes())
    names = set(
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    )
    assert {f"{s}.localhost" for s in ("ehr", "authserver", "fhirserver", "cds-example", "smart-example")} <= names


def test_a_piped_table_keeps_every_column_whole(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    types = ("Patient", "Observation", "Condition", "Encounter", "Procedure", "MedicationRequest", "Immunization")
    scope = " ".join(f"system/{t}.rs" for t in types)
    base = ["--data-dir", str(tmp_path), "--db", database_url]
    args = ["clients", "add", "a-backend-with-a-long-name", "--kind", "backend", *base]
    args += ["--jwks-uri", "https://backend.example/jwks.json"]
    code, _, err = _invoke(*args, *[x for s in scope.split() for x in ("--scope", s)])
    assert code == 0, err
    code, out, _ = _invoke("clients", "list", *base)
    assert code == 0
    row = next(line for line in out.splitlines() if "a-backend-with-a-long-name" in line)
    assert scope in row
