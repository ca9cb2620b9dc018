"""The whole flow against `mockehr up --replicas 2` (HAProxy in front, PostgreSQL and Redis behind),
with consecutive requests landing on different replicas: HAProxy names the replica that answered
in X-Mockehr-Replica, and its per-server counters show every replica served. What one replica
starts (a login, an authorization code, a refresh family, a session, a revocation, a key) another
one finishes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
import secrets
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest

from common.clock import system_clock
from common.crypto import decode_kek
from common.db import make_engine, make_sessionmaker
from common.jose import new_jti, sign_jwt
from common.keys import KeyStore, SigningKey
from ehr.ui.session import SESSION_COOKIE
from mockehr.balancer import REPLICA_HEADER
from mockehr.stack import SERVICES
from tests.e2e.forms import form
from tests.e2e.test_stack import _cds_jwt, _token_exchange
from tests.replicas.conftest import REPLICAS, ReplicaStack

pytestmark = pytest.mark.e2e
APP = "replica-app"
APP_REDIRECT = "https://app.test/callback"
APP_SCOPE = "launch/patient openid fhirUser patient/*.rs offline_access"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_NEXT = re.compile(r'name="next" value="([^"]*)"')


def _services(served_by: list[str]) -> dict[str, set[str]]:
    """Replica names seen, by service ("fhirserver-2" → fhirserver)."""
    seen: dict[str, set[str]] = {}
    for name in served_by:
        seen.setdefault(name.rsplit("-", 1)[0], set()).add(name)
    return seen


def _all(service: str) -> set[str]:
    return {f"{service}-{i + 1}" for i in range(REPLICAS)}


def _cli(stack: ReplicaStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mockehr", *args, "--data-dir", str(stack.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _users(stack: ReplicaStack) -> list[dict[str, Any]]:
    users = json.loads((stack.data_dir / "demo-users.json").read_text())
    return [{"login": login, **user} for login, user in users.items()]


def _signer(stack: ReplicaStack, service: str = "ehr") -> SigningKey:
    """The service's current signing key, read as any replica reads it (PostgreSQL + the KEK)."""

    async def load() -> SigningKey:
        engine = make_engine(stack.database_url)
        try:
            kek = decode_kek((stack.data_dir / "kek").read_text())
            store = KeyStore(make_sessionmaker(engine), service, kek, refresh_seconds=0.01, clock=system_clock)
            return await store.signer()
        finally:
            await engine.dispose()

    return asyncio.run(load())


def test_consecutive_requests_land_on_every_replica_of_every_service(replica_stack: ReplicaStack) -> None:
    served_by: list[str] = []
    with replica_stack.client(served_by) as client:
        for service in SERVICES:
            for _ in range(2 * REPLICAS):
                assert client.get(replica_stack.url(service.port_offset, "/healthz")).status_code == 200
    seen = _services(served_by)
    for service in SERVICES:
        assert seen[service.name] == _all(service.name)
    stats = replica_stack.stats()
    for service in SERVICES:
        for replica in _all(service.name):
            row = stats[(service.name, replica)]
            assert row["status"] == "UP" and int(row["stot"]) > 0, row


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _follow(client: httpx.Client, response: httpx.Response) -> httpx.Response:
    """Follow redirects like a browser, stopping at a page or at the app's callback."""
    for _ in range(10):
        if not response.is_redirect or response.headers["location"].startswith(APP_REDIRECT):
            return response
        response = client.get(urljoin(str(response.url), response.headers["location"]))
    raise AssertionError("redirect loop")


def test_a_smart_standalone_launch_and_refresh_cross_replicas_of_the_authorization_server(
    replica_stack: ReplicaStack,
) -> None:
    added = _cli(
        replica_stack,
        "clients",
        "add",
        APP,
        "--kind",
        "smart-app",
        "--auth-method",
        "none",
        "--scope",
        APP_SCOPE,
        "--redirect-uri",
        APP_REDIRECT,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    doctor = _users(replica_stack)[0]
    mine = doctor["patients"][0]
    fhir = replica_stack.url(2, "/fhir")
    served_by: list[str] = []
    with replica_stack.client(served_by) as client:
        config = client.get(f"{fhir}/.well-known/smart-configuration").json()
        verifier, challenge = _pkce()
        state = secrets.token_urlsafe(16)
        query = {
            "response_type": "code",
            "client_id": APP,
            "redirect_uri": APP_REDIRECT,
            "scope": APP_SCOPE,
            "state": state,
            "aud": fhir,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        login_page = _follow(client, client.get(f"{config['authorization_endpoint']}?{urlencode(query)}"))
        assert (login_page.status_code, login_page.url.path) == (200, "/login"), login_page.text
        login = form(login_page, "/login")
        signed_in = client.post(
            urljoin(str(login_page.url), login.action),
            data={**login.hidden, "username": doctor["login"], "password": doctor["password"]},
        )
        assert signed_in.status_code == 303, signed_in.text
        picker = _follow(client, signed_in)
        assert picker.status_code == 200, picker.text
        choice = form(picker, "/authorize/select")
        callback = client.post(urljoin(str(picker.url), choice.action), data={**choice.hidden, "patient": mine})
        assert callback.status_code == 303, callback.text
        answer = {k: v[0] for k, v in parse_qs(urlsplit(callback.headers["location"]).query).items()}
        assert answer["state"] == state
        token = client.post(
            config["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": answer["code"],
                "redirect_uri": APP_REDIRECT,
                "client_id": APP,
                "code_verifier": verifier,
            },
        )
        assert token.status_code == 200, token.text
        issued = token.json()
        assert issued["patient"] == mine and issued["refresh_token"]
        refresh = issued["refresh_token"]
        for _ in range(2 * REPLICAS):  # each rotation may land on another replica
            read = client.get(f"{fhir}/Patient/{mine}", headers={"Authorization": f"Bearer {issued['access_token']}"})
            assert (read.status_code, read.json()["id"]) == (200, mine), read.text
            refreshed = client.post(
                config["token_endpoint"],
                data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": APP},
            )
            assert refreshed.status_code == 200, refreshed.text
            issued = refreshed.json()
            assert issued["refresh_token"] != refresh and issued["patient"] == mine
            refresh = issued["refresh_token"]
    seen = _services(served_by)
    assert seen["authserver"] == _all("authserver") and seen["fhirserver"] == _all("fhirserver"), served_by


def test_a_revoked_token_is_refused_by_every_fhir_replica_within_a_second(replica_stack: ReplicaStack) -> None:
    users = _users(replica_stack)
    doctor = users[0]
    mine = doctor["patients"][0]
    signer = _signer(replica_stack)
    exchanged = _token_exchange(replica_stack.up, signer, doctor["fhirUser"], mine)
    assert exchanged.status_code == 200, exchanged.text
    token = exchanged.json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    replicas = replica_stack.replicas("fhirserver")
    assert len(replicas) == REPLICAS
    with replica_stack.client() as client:
        for port in replicas.values():  # each replica, directly on its internal port
            assert client.get(f"https://localhost:{port}/fhir/Patient/{mine}", headers=bearer).status_code == 200
        now = int(time.time())
        token_url = replica_stack.url(1, "/token")
        assertion = sign_jwt(
            {"iss": "ehr", "sub": "ehr", "aud": token_url, "iat": now, "exp": now + 60, "jti": new_jti()},
            signer,
            typ="JWT",
        )
        revoked = client.post(
            replica_stack.url(1, "/revoke"),
            data={
                "token": token,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        assert revoked.status_code == 200
        # The 1 s guarantee (docs/tokens.md), held by each replica on its own.
        deadline = time.monotonic() + 1.0
        refused: dict[str, int] = {}
        while time.monotonic() < deadline and len(refused) < len(replicas):
            for name, port in replicas.items():
                if name not in refused:
                    status = client.get(f"https://localhost:{port}/fhir/Patient/{mine}", headers=bearer).status_code
                    if status == 401:
                        refused[name] = status
        assert set(refused) == set(replicas)
        # And through the load balancer, whichever replica answers.
        assert {
            client.get(replica_stack.url(2, f"/fhir/Patient/{mine}"), headers=bearer).status_code for _ in range(4)
        } == {401}


def _ehr_api(client: httpx.Client, stack: ReplicaStack, path: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(stack.url(0, path), json=body, headers={"Authorization": f"Bearer {stack.admin_token()}"})


def test_hooks_with_prefetch_are_answered_whichever_replicas_take_them(replica_stack: ReplicaStack) -> None:
    doctor = _users(replica_stack)[0]
    served_by: list[str] = []
    before = replica_stack.stats()
    with replica_stack.client(served_by) as client:
        for _ in range(2 * REPLICAS):
            response = _ehr_api(
                client,
                replica_stack,
                "/api/hooks/patient-view",
                {"userId": doctor["fhirUser"], "patientId": doctor["patients"][0]},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            results = {s["serviceId"]: s for s in body["services"]}
            assert results["patient-greeting"]["status"] == "ok", results
            assert results["patient-greeting"]["cards"][0]["summary"].startswith("Now seeing:")
            detail = client.get(
                replica_stack.url(0, f"/api/exchanges/{body['hookInstance']}"),
                headers={"Authorization": f"Bearer {replica_stack.admin_token()}"},
            )
            assert detail.status_code == 200, detail.text
            greeting = next(s for s in detail.json()["services"] if s["serviceId"] == "patient-greeting")
            assert greeting["request"]["prefetch"]["patient"]["id"] == doctor["patients"][0]
    assert _services(served_by)["ehr"] == _all("ehr")
    after = replica_stack.stats()
    # The EHR's calls reached every replica of the CDS Service (through HAProxy, like any client's).
    for replica in _all("cds-example"):
        assert int(after[("cds-example", replica)]["stot"]) > int(before[("cds-example", replica)]["stot"])


def _sign_in(client: httpx.Client, stack: ReplicaStack) -> tuple[dict[str, Any], httpx.Response]:
    user = _users(stack)[0]
    page = client.get(stack.url(0, "/login"))
    assert page.url.path == "/login" and page.url.port == stack.up.base_port + 1
    csrf, next_url = _CSRF.search(page.text), _NEXT.search(page.text)
    assert csrf and next_url
    form = {
        "username": user["login"],
        "password": user["password"],
        "csrf": csrf.group(1),
        "next": html.unescape(next_url.group(1)),
    }
    landed = client.post(stack.url(1, "/login"), data=form)
    assert landed.status_code == 200 and landed.url == stack.url(0, "/patients"), landed.url
    return user, landed


def test_a_ui_session_goes_on_across_ehr_replicas_and_its_sign_out_holds_at_every_one(
    replica_stack: ReplicaStack,
) -> None:
    served_by: list[str] = []
    with replica_stack.client(served_by, follow_redirects=True) as client:
        user, landed = _sign_in(client, replica_stack)
        for _ in range(2 * REPLICAS):
            page = client.get(replica_stack.url(0, f"/patients/{user['patients'][0]}"))
            assert page.status_code == 200 and 'id="chart"' in page.text
        assert _services(served_by)["ehr"] == _all("ehr"), served_by
        copied = client.cookies[SESSION_COOKIE]
        csrf = _CSRF.search(landed.text)
        assert csrf
        out = client.post(replica_stack.url(0, "/logout"), data={"csrf": csrf.group(1)}, follow_redirects=False)
        assert out.status_code == 303
    # The copied cookie is refused by each EHR replica, reached directly.
    for port in replica_stack.replicas("ehr").values():
        with replica_stack.client() as thief:
            thief.cookies.set(SESSION_COOKIE, copied, domain="localhost")
            stolen = thief.get(f"https://localhost:{port}/patients/{user['patients'][0]}")
            assert stolen.status_code == 303 and stolen.headers["location"].startswith("/login"), port


def _kid(jwt: str) -> str:
    header = jwt.split(".", maxsplit=1)[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return kid


def test_a_rotated_key_is_published_used_and_trusted_by_every_replica(replica_stack: ReplicaStack) -> None:
    new: dict[str, str] = {}
    for service in ("ehr", "authserver"):
        old = _signer(replica_stack, service).kid
        rotated = _cli(replica_stack, "keys", "rotate", service, "--overlap", "60")
        assert rotated.returncode == 0, rotated.stderr
        new[service] = _signer(replica_stack, service).kid
        assert new[service] != old and new[service] in rotated.stdout
    doctor = _users(replica_stack)[0]
    mine = doctor["patients"][0]
    with replica_stack.client() as client:
        # Every replica of both signers publishes the new key.
        for service in ("ehr", "authserver"):
            for name, port in replica_stack.replicas(service).items():
                deadline = time.monotonic() + 15
                kids: set[str] = set()
                while time.monotonic() < deadline and new[service] not in kids:
                    kids = {
                        k["kid"] for k in client.get(f"https://localhost:{port}/.well-known/jwks.json").json()["keys"]
                    }
                    time.sleep(0.1)
                assert new[service] in kids, (name, kids)
        # Once published ahead, every authorization server replica signs with it…
        issuers: set[str] = set()
        token = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and issuers != _all("authserver"):
            exchanged = _token_exchange(replica_stack.up, _signer(replica_stack), doctor["fhirUser"], mine)
            assert exchanged.status_code == 200, exchanged.text
            if _kid(exchanged.json()["access_token"]) == new["authserver"]:
                issuers.add(exchanged.headers[REPLICA_HEADER])
                token = exchanged.json()["access_token"]
            time.sleep(0.1)
        assert issuers == _all("authserver")
        # …every FHIR replica verifies its tokens…
        for port in replica_stack.replicas("fhirserver").values():
            read = client.get(
                f"https://localhost:{port}/fhir/Patient/{mine}", headers={"Authorization": f"Bearer {token}"}
            )
            assert read.status_code == 200, read.text
        # …and every CDS Service replica trusts the EHR's new key.
        cds_jwt = _cds_jwt(replica_stack.up, _signer(replica_stack, "ehr"))
        assert _kid(cds_jwt) == new["ehr"]
        for port in replica_stack.replicas("cds-example").values():
            called = client.post(
                f"https://localhost:{port}/cds-services/patient-greeting",
                json={
                    "hook": "patient-view",
                    "hookInstance": str(uuid.uuid4()),
                    "context": {"userId": doctor["fhirUser"], "patientId": mine},
                    "prefetch": {
                        "patient": {"resourceType": "Patient", "id": mine, "name": [{"text": "Grace Hopper"}]}
                    },
                },
                headers={"Authorization": f"Bearer {_cds_jwt(replica_stack.up, _signer(replica_stack, 'ehr'))}"},
            )
            assert called.status_code == 200, called.text
