"""`mockehr up` as a new user meets it: four HTTPS services, verified against the printed CA."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from common.clock import system_clock
from common.crypto import decode_kek
from common.db import make_engine, make_sessionmaker
from common.jose import new_jti, sign_jwt
from common.keys import PRIVATE_MEMBERS, KeyStore, SigningKey
from tests.e2e.conftest import UpProcess, free_base_port, start_up

pytestmark = pytest.mark.e2e


def _ca_only(up: UpProcess) -> ssl.SSLContext:
    """Trust exactly the CA `up` printed, nothing from the system store."""
    match = re.search(r"CA certificate\s+(\S+)", up.output)
    assert match, up.output
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(match.group(1))
    return ctx


def _url(up: UpProcess, offset: int, path: str) -> str:
    return f"https://localhost:{up.base_port + offset}{path}"


def _ehr_signer(up: UpProcess) -> SigningKey:
    """The EHR's current signing key, read as an EHR replica would (DB + KEK from the data dir)."""

    async def load() -> SigningKey:
        engine = make_engine(f"sqlite:///{up.data_dir / 'mockehr.db'}")
        try:
            kek = decode_kek((up.data_dir / "kek").read_text())
            store = KeyStore(make_sessionmaker(engine), "ehr", kek, refresh_seconds=0.01, clock=system_clock)
            return await store.signer()
        finally:
            await engine.dispose()

    return asyncio.run(load())


def _cds_jwt(up: UpProcess, key: SigningKey) -> str:
    now = int(time.time())
    claims = {
        "iss": f"https://localhost:{up.base_port}",
        "aud": _url(up, 3, "/cds-services/patient-greeting"),
        "iat": now,
        "exp": now + 120,
        "jti": new_jti(),
    }
    return sign_jwt(claims, key, typ="JWT")


def _call_cds(up: UpProcess, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {
        "hook": "patient-view",
        "hookInstance": "0a3b4f43-7a3c-4a49-9f7a-6f1d2f1e0b11",
        "context": {"userId": "Practitioner/x", "patientId": "p"},
        "prefetch": {"patient": {"resourceType": "Patient", "id": "p", "name": [{"text": "Grace Hopper"}]}},
    }
    return httpx.post(_url(up, 3, "/cds-services/patient-greeting"), json=body, headers=headers, verify=_ca_only(up))


def test_every_service_answers_healthz_over_tls_verified_against_the_printed_ca(stack: UpProcess) -> None:
    for offset, name in enumerate(["ehr", "authserver", "fhirserver", "cds-example"]):
        response = httpx.get(_url(stack, offset, "/healthz"), verify=_ca_only(stack))
        assert response.json() == {"status": "ok"}, name
    assert httpx.get(_url(stack, 2, "/fhir/metadata"), verify=_ca_only(stack)).json()["fhirVersion"] == "4.0.1"


def test_a_client_that_does_not_trust_the_dev_ca_is_refused(stack: UpProcess) -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        httpx.get(_url(stack, 0, "/healthz"), verify=ssl.create_default_context())
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_the_ehr_jwks_holds_public_keys_only(stack: UpProcess) -> None:
    keys = httpx.get(_url(stack, 0, "/.well-known/jwks.json"), verify=_ca_only(stack)).json()["keys"]
    assert keys and all(not PRIVATE_MEMBERS & k.keys() for k in keys)
    assert {k["alg"] for k in keys} == {"ES384"}


def test_the_summary_prints_urls_the_ca_the_admin_token_and_each_demo_user(stack: UpProcess) -> None:
    out = stack.output
    for offset, path in [(0, ""), (1, ""), (2, "/fhir"), (3, "/cds-services")]:
        assert _url(stack, offset, path) in out
    admin_token = (stack.data_dir / "admin-token").read_text().strip()
    assert admin_token in out
    assert (stack.data_dir / "admin-token").stat().st_mode & 0o777 == 0o600
    users = json.loads((stack.data_dir / "demo-users.json").read_text())
    assert len(users) >= 3
    for login, user in users.items():
        line = next(line for line in stack.lines if f"login {login} " in line)
        assert user["fhirUser"].startswith("Practitioner/") and user["fhirUser"] in line
        assert f"password {user['password']}" in line
        assert f"Patient/{user['patients'][0]}" in line


def test_the_example_cds_service_trusts_the_ehrs_key_over_real_tls_and_nothing_else(stack: UpProcess) -> None:
    signer = _ehr_signer(stack)
    ok = _call_cds(stack, _cds_jwt(stack, signer))
    assert ok.status_code == 200, ok.text
    assert ok.json()["cards"][0]["summary"] == "Now seeing: Grace Hopper"
    refused = _call_cds(stack, None)
    assert (refused.status_code, refused.content) == (401, b"")


def test_key_rotation_publishes_both_keys_then_retires_the_old_one(stack: UpProcess) -> None:
    jwks_url = _url(stack, 0, "/.well-known/jwks.json")
    old = _ehr_signer(stack)
    token_from_old_key = _cds_jwt(stack, old)
    result = subprocess.run(
        [sys.executable, "-m", "mockehr", "keys", "rotate", "ehr", "--data-dir", str(stack.data_dir), "--overlap", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    new = _ehr_signer(stack)
    assert new.kid != old.kid and new.kid in result.stdout
    deadline = time.monotonic() + 10
    kids: set[str] = set()
    while time.monotonic() < deadline and kids != {old.kid, new.kid}:
        kids = {k["kid"] for k in httpx.get(jwks_url, verify=_ca_only(stack)).json()["keys"]}
        time.sleep(0.1)
    assert kids == {old.kid, new.kid}
    # A token signed with the old key before the rotation still verifies at the CDS Service…
    assert _call_cds(stack, token_from_old_key).status_code == 200
    # …and once the publish-ahead has passed, tokens from the new key verify too (the CDS Service
    # refetches the JWKS on the unknown kid, at most once a second).
    deadline = time.monotonic() + 5
    status = 0
    while time.monotonic() < deadline and status != 200:
        status = _call_cds(stack, _cds_jwt(stack, new)).status_code
        time.sleep(0.2)
    assert status == 200
    # Once the overlap has passed, the old key is gone.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and old.kid in kids:
        kids = {k["kid"] for k in httpx.get(jwks_url, verify=_ca_only(stack)).json()["keys"]}
        time.sleep(0.2)
    assert kids == {new.kid}
    listing = subprocess.run(
        [sys.executable, "-m", "mockehr", "keys", "list", "--json", "--data-dir", str(stack.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    statuses = {k["kid"]: k["status"] for k in json.loads(listing.stdout) if k["service"] == "ehr"}
    assert statuses[new.kid] == "active" and statuses[old.kid] == "retired"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_every_process_and_up_again_reuses_keys_and_data(tmp_path: Path) -> None:
    data_dir = tmp_path / ".mockehr"
    base = free_base_port()
    first = start_up(data_dir, base, "--patients", "3")
    first.wait_for("Ctrl-C stops every service.")
    kids = {
        k["kid"] for k in httpx.get(_url(first, 0, "/.well-known/jwks.json"), verify=_ca_only(first)).json()["keys"]
    }
    users = (data_dir / "demo-users.json").read_text()
    ca = (data_dir / "ca.pem").read_bytes()
    assert first.stop() == 0
    assert "stopped" in first.output
    assert not any(_port_open(base + i) for i in range(4))

    again = start_up(data_dir, base)
    try:
        again.wait_for("Ctrl-C stops every service.", timeout=30)
        again_kids = {
            k["kid"] for k in httpx.get(_url(again, 0, "/.well-known/jwks.json"), verify=_ca_only(again)).json()["keys"]
        }
        assert again_kids == kids
        assert (data_dir / "demo-users.json").read_text() == users
        assert (data_dir / "ca.pem").read_bytes() == ca
    finally:
        assert again.stop() == 0
    assert not any(_port_open(base + i) for i in range(4))


def _up_once(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mockehr", "up", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    base = free_base_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", base + 2))
        blocker.listen()
        result = _up_once("--data-dir", str(tmp_path / "d"), "--base-port", str(base))
    _assert_one_line_error(result, f"port {base + 2} on 127.0.0.1 is in use")


def test_an_unparseable_database_url_is_a_one_line_error(tmp_path: Path) -> None:
    _assert_one_line_error(
        _up_once("--data-dir", str(tmp_path / "d"), "--db", "::not a url::"), "cannot parse database URL"
    )


def test_postgresql_down_is_a_one_line_error(tmp_path: Path) -> None:
    result = _up_once("--data-dir", str(tmp_path / "d"), "--db", "postgresql://postgres@127.0.0.1:1/x")
    _assert_one_line_error(result, "cannot connect to the database")


def test_an_unwritable_data_dir_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    _assert_one_line_error(_up_once("--data-dir", str(blocker / "data")), "is not writable")


def _token_exchange(up: UpProcess, signer: SigningKey, user: str, patient: str) -> httpx.Response:
    now = int(time.time())
    token_url = _url(up, 1, "/token")
    assertion = sign_jwt(
        {"iss": "ehr", "sub": "ehr", "aud": token_url, "iat": now, "exp": now + 60, "jti": new_jti()}, signer, typ="JWT"
    )
    user_assertion = sign_jwt(
        {"iss": "ehr", "sub": user, "aud": token_url, "iat": now, "exp": now + 30, "jti": new_jti()},
        signer,
        typ="user+jwt",
    )
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        "subject_token": user_assertion,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "cds_service": "cds-example",
        "patient": patient,
        "resource": _url(up, 2, "/fhir"),
        "scope": "patient/Patient.rs patient/Observation.rs",
    }
    return httpx.post(token_url, data=form, verify=_ca_only(up))


def test_the_ehr_obtains_a_per_call_token_that_the_fhir_server_honours_and_forgets_on_revocation(
    stack: UpProcess,
) -> None:
    users = json.loads((stack.data_dir / "demo-users.json").read_text())
    doctor, other = list(users.values())[:2]
    mine, theirs = doctor["patients"][0], other["patients"][0]
    signer = _ehr_signer(stack)
    response = _token_exchange(stack, signer, doctor["fhirUser"], mine)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    fhir = _url(stack, 2, "/fhir")
    assert httpx.get(f"{fhir}/Patient/{mine}", headers=headers, verify=_ca_only(stack)).status_code == 200
    assert httpx.get(f"{fhir}/Patient/{theirs}", headers=headers, verify=_ca_only(stack)).status_code == 404
    refused = _token_exchange(stack, signer, doctor["fhirUser"], theirs)
    assert refused.json()["error"] == "invalid_grant"
    # The EHR revokes the token when the exchange is over; the FHIR server honours it within a second.
    now = int(time.time())
    assertion = sign_jwt(
        {"iss": "ehr", "sub": "ehr", "aud": _url(stack, 1, "/token"), "iat": now, "exp": now + 60, "jti": new_jti()},
        signer,
        typ="JWT",
    )
    revoked = httpx.post(
        _url(stack, 1, "/revoke"),
        data={
            "token": token,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
        verify=_ca_only(stack),
    )
    assert revoked.status_code == 200
    deadline = time.monotonic() + 1.0
    status = 200
    while time.monotonic() < deadline and status == 200:
        status = httpx.get(f"{fhir}/Patient/{mine}", headers=headers, verify=_ca_only(stack)).status_code
    assert status == 401
