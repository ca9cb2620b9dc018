"""The example CDS Service trusts only the EHR's correctly signed, fresh, single-use JWTs.

Each attack gets a bare 401 (no body, no card); the correctly signed request is the positive
control that shows the failures are not an accident.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.clock import FrozenClock
from common.jose import new_jti, sign_jwt
from common.jwks import JwksCache
from common.keys import SigningKey, generate_key
from ehr.app import create_app as create_ehr
from ehr.settings import EhrSettings
from examples.cds_service.app import create_app as create_cds
from examples.cds_service.settings import CdsSettings
from tests.integration.apps import serving

EHR = "https://ehr.test"
CDS = "https://cds.test"
JWKS_URL = f"{EHR}/.well-known/jwks.json"
SERVICE = f"{CDS}/cds-services/patient-greeting"
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"given": ["Ada"], "family": "Lovelace"}],
    "birthDate": "1990-12-10",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_jwt(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


class Harness:
    def __init__(self, client: httpx.AsyncClient, key: SigningKey, clock: FrozenClock, jwks: dict[str, Any]) -> None:
        self.client, self.key, self.clock, self.jwks = client, key, clock, jwks

    def claims(self, aud: str | list[str] = SERVICE, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {"iss": EHR, "aud": aud, "iat": now, "exp": now + 300, "jti": new_jti()}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, header: dict[str, Any] | None = None, **claims: Any) -> str:
        return sign_jwt(self.claims(**claims), key or self.key, typ="JWT", extra_header=header)

    async def call(
        self, token: str | None, *, scheme: str = "Bearer", url: str = SERVICE, body: Any = None
    ) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
        payload = (
            body
            if body is not None
            else {
                "hook": "patient-view",
                "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
                "context": {"userId": "Practitioner/1", "patientId": "p1"},
                "prefetch": {"patient": PATIENT},
            }
        )
        return await self.client.post(url.removeprefix(CDS), json=payload, headers=headers)


@pytest.fixture
async def cds(tmp_path: Path, database_url: str) -> AsyncIterator[Harness]:
    clock = FrozenClock(time.time())
    ehr_app = create_ehr(EhrSettings(data_dir=tmp_path, database_url=database_url, public_url=EHR), clock=clock)
    cds_app = create_cds(
        CdsSettings(data_dir=tmp_path, public_url=CDS, ehr_issuer=EHR, ehr_jwks_url=JWKS_URL), clock=clock
    )
    async with serving(ehr_app, EHR) as ehr_client, serving(cds_app, CDS) as cds_client:
        fetches: list[str] = []

        async def record(request: httpx.Request) -> None:
            fetches.append(str(request.url))

        to_ehr = httpx.AsyncClient(transport=httpx.ASGITransport(app=ehr_app), event_hooks={"request": [record]})
        cds_app.state.jwks = JwksCache(to_ehr, JWKS_URL, clock=clock)
        key = await ehr_app.state.runtime.keys.signer()
        harness = Harness(cds_client, key, clock, (await ehr_client.get("/.well-known/jwks.json")).json())
        harness.fetches = fetches  # type: ignore[attr-defined]
        yield harness
        await to_ehr.aclose()


def _assert_bare_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.content == b""
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_correctly_signed_request_gets_a_card_from_prefetch(cds: Harness) -> None:
    response = await cds.call(cds.token())
    assert response.status_code == 200
    card = response.json()["cards"][0]
    assert card["summary"].startswith("Now seeing: Ada Lovelace, ")
    assert card["indicator"] == "info" and card["source"]["label"]


async def test_aud_as_an_array_containing_the_service_url_is_accepted(cds: Harness) -> None:
    response = await cds.call(cds.token(aud=["https://other.example", SERVICE]))
    assert response.status_code == 200


async def test_discovery_and_feedback_require_the_jwt_with_their_own_url_as_aud(cds: Harness) -> None:
    discovery = f"{CDS}/cds-services"
    ok = await cds.client.get("/cds-services", headers={"Authorization": f"Bearer {cds.token(aud=discovery)}"})
    assert ok.status_code == 200 and ok.json()["services"][0]["id"] == "patient-greeting"
    _assert_bare_401(await cds.client.get("/cds-services", headers={"Authorization": f"Bearer {cds.token()}"}))
    feedback_url = f"{SERVICE}/feedback"
    body = {"feedback": [{"card": "x", "outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    _assert_bare_401(await cds.call(cds.token(), url=feedback_url, body=body))
    assert (await cds.call(cds.token(aud=feedback_url), url=feedback_url, body=body)).status_code == 200


async def test_a_missing_prefetch_gets_412_not_a_guess(cds: Harness) -> None:
    body = {"hook": "patient-view", "hookInstance": "x", "context": {"patientId": "p1"}}
    response = await cds.call(cds.token(), body=body)
    assert response.status_code == 412


def _hs256_with_public_key(h: Harness) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": h.key.kid}
    secret = json.dumps(h.jwks["keys"][0]).encode()
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(h.claims()).encode())}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _tampered(h: Harness) -> str:
    header, _, signature = h.token().split(".")
    forged = h.claims(iss=EHR)
    forged["patient_override"] = "someone-else"
    return f"{header}.{_b64(json.dumps(forged).encode())}.{signature}"


def _without_kid(h: Harness) -> str:
    token = h.token()
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    del header["kid"]
    return f"{_b64(json.dumps(header).encode())}.{token.split('.', 1)[1]}"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda h: None, id="no-authorization-header"),
        pytest.param(lambda h: ("Basic", h.token()), id="non-bearer-scheme"),
        pytest.param(lambda h: "garbage", id="garbage-token"),
        pytest.param(lambda h: h.token(aud=f"{CDS}/cds-services/other"), id="aud-of-another-service"),
        pytest.param(lambda h: h.token(aud=f"{CDS}/cds-services"), id="aud-of-the-discovery-url"),
        pytest.param(lambda h: h.token(aud=CDS), id="aud-of-the-base-url"),
        pytest.param(lambda h: h.token(aud=f"{SERVICE}/"), id="aud-with-a-trailing-slash"),
        pytest.param(lambda h: h.token(iss="https://evil.example"), id="untrusted-iss"),
        pytest.param(lambda h: h.token(exp=int(h.clock()) - 120), id="expired"),
        pytest.param(lambda h: h.token(exp=None), id="exp-missing"),
        pytest.param(lambda h: h.token(exp=int(h.clock()) + 86400), id="exp-absurdly-far"),
        pytest.param(lambda h: h.token(iat=int(h.clock()) + 600), id="iat-in-the-future"),
        pytest.param(lambda h: h.token(jti=None), id="jti-missing"),
        pytest.param(lambda h: h.token(header={"jku": "https://evil.example/jwks"}), id="untrusted-jku"),
        pytest.param(lambda h: h.token(header={"jku": "http://ehr.test/.well-known/jwks.json"}), id="http-jku"),
        pytest.param(lambda h: h.token(header={"jwk": h.jwks["keys"][0]}), id="embedded-jwk"),
        pytest.param(
            lambda h: h.token(key=SigningKey(h.key.kid, "ES384", generate_key("ES384"))),
            id="signed-by-an-unknown-key-with-a-known-kid",
        ),
        pytest.param(
            lambda h: h.token(key=SigningKey("unknown-kid", "ES384", generate_key("ES384"))), id="unknown-kid"
        ),
        pytest.param(lambda h: _raw_jwt({"alg": "none", "typ": "JWT", "kid": h.key.kid}, h.claims()), id="alg-none"),
        pytest.param(
            lambda h: _raw_jwt({"alg": "nOnE", "typ": "JWT", "kid": h.key.kid}, h.claims()), id="alg-none-mixed-case"
        ),
        pytest.param(_hs256_with_public_key, id="hs256-keyed-with-the-public-key"),
        pytest.param(_tampered, id="tampered-payload"),
        pytest.param(_without_kid, id="kid-missing"),
        pytest.param(lambda h: sign_jwt(h.claims(), h.key, typ="at+jwt"), id="typ-not-jwt"),
    ],
)
async def test_every_invalid_token_gets_a_bare_401_and_no_card(cds: Harness, mutate: Any) -> None:
    token = mutate(cds)
    if isinstance(token, tuple):
        response = await cds.call(token[1], scheme=token[0])
    else:
        response = await cds.call(token)
    _assert_bare_401(response)


async def test_a_replayed_token_is_refused(cds: Harness) -> None:
    token = cds.token()
    assert (await cds.call(token)).status_code == 200
    _assert_bare_401(await cds.call(token))


async def test_an_untrusted_jku_is_never_fetched(cds: Harness) -> None:
    assert (await cds.call(cds.token())).status_code == 200  # the configured JWKS is now cached
    before = list(cds.fetches)  # type: ignore[attr-defined]
    _assert_bare_401(await cds.call(cds.token(header={"jku": "https://attacker.example/jwks.json"})))
    assert all(url == JWKS_URL for url in cds.fetches)  # type: ignore[attr-defined]
    assert len(cds.fetches) == len(before)  # type: ignore[attr-defined]


async def test_made_up_kids_do_not_cause_a_fetch_storm(cds: Harness) -> None:
    await cds.call(cds.token())
    start = len(cds.fetches)  # type: ignore[attr-defined]
    for i in range(20):
        await cds.call(cds.token(key=SigningKey(f"made-up-{i}", "ES384", cds.key.key)))
    assert len(cds.fetches) - start <= 1  # type: ignore[attr-defined]
