"""ehr.fhir_token: what the EHR sends to the authorization server for a per-call token and its
revocation, and how it treats the answers (the real exchange runs in test_ehr_engine.py)."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from common.clock import FrozenClock
from common.jose import import_public_jwks, verify_jwt
from common.keys import SigningKey, new_key_row
from ehr.fhir_token import TokenExchangeClient, TokenExchangeError

NOW = 1_800_000_000
AUTH = "https://auth.example.org"
FHIR = "https://fhir.example.org/fhir"
GOOD = {
    "access_token": "at-1",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/Patient.rs",
    "patient": "p1",
    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
}


class StaticKeys:
    def __init__(self, key: SigningKey) -> None:
        self.key = key

    async def signer(self) -> SigningKey:
        return self.key


@pytest.fixture(scope="module")
def key() -> tuple[SigningKey, Any]:
    row, signing = new_key_row("ehr", "ES384", os.urandom(32), NOW)
    return signing, import_public_jwks({"keys": [json.loads(row.public_jwk)]})


class FakeAuth:
    def __init__(self, status: int = 200, body: Any = None) -> None:
        self.status = status
        self.body = GOOD if body is None else body
        self.forms: list[tuple[str, dict[str, str]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.forms.append((str(request.url), form))
        if request.url.path == "/revoke":
            return httpx.Response(self.status, json={})
        return httpx.Response(self.status, json=self.body)


def client(fake: FakeAuth, key: SigningKey) -> TokenExchangeClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    return TokenExchangeClient(
        http, StaticKeys(key), authserver_url=AUTH, client_id="ehr", fhir_base_url=FHIR, clock=FrozenClock(NOW)
    )


def verify(token: str, keyset: Any, typ: str) -> dict[str, Any]:
    return verify_jwt(
        token, keyset, algorithms=["ES384"], typ=typ, issuer="ehr", audience=f"{AUTH}/token", clock=FrozenClock(NOW)
    ).claims


async def test_the_exchange_asks_for_this_service_patient_fhir_server_and_scope_as_the_ehr(
    key: tuple[SigningKey, Any],
) -> None:
    signing, keyset = key
    fake = FakeAuth()
    token = await client(fake, signing).exchange(
        service_client_id="cds-a", patient="p1", scope="patient/Patient.rs", user_ref="Practitioner/d1"
    )
    [(url, form)] = fake.forms
    assert url == f"{AUTH}/token"
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["cds_service"] == "cds-a"
    assert form["patient"] == "p1"
    assert form["resource"] == FHIR
    assert form["scope"] == "patient/Patient.rs"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assertion = verify(form["client_assertion"], keyset, "JWT")
    assert assertion["sub"] == "ehr" and assertion["exp"] - assertion["iat"] <= 60
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    user = verify(form["subject_token"], keyset, "user+jwt")
    assert user["sub"] == "Practitioner/d1"
    assert user["exp"] - user["iat"] <= 60
    assert user["jti"] != assertion["jti"]
    assert token.fhir_authorization("cds-a") == {
        "access_token": "at-1",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/Patient.rs",
        "subject": "cds-a",
        "patient": "p1",
    }


async def test_the_users_own_session_token_is_the_subject_when_the_ehr_has_one(key: tuple[SigningKey, Any]) -> None:
    fake = FakeAuth()
    await client(fake, key[0]).exchange(
        service_client_id="cds-a",
        patient="p1",
        scope="patient/Patient.rs",
        user_ref="Practitioner/d1",
        user_token="s-1",
    )
    form = fake.forms[0][1]
    assert form["subject_token"] == "s-1"
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, {"error": "invalid_grant", "error_description": "the patient is not available to this user"},
         "token exchange refused: invalid_grant: the patient is not available to this user"),
        (401, {"error": "invalid_client"}, "token exchange refused: invalid_client"),
        (500, "oops", "token exchange refused: HTTP 500"),
        (200, {"access_token": "x"}, "token exchange answered without a usable token"),
        (200, {**GOOD, "token_type": "DPoP"}, "token exchange answered without a usable bearer token"),
        (200, {**GOOD, "patient": "p2"}, "token exchange answered for another patient"),
    ],
)  # fmt: skip
async def test_a_refused_or_unusable_exchange_is_an_error_with_a_reason(
    key: tuple[SigningKey, Any], status: int, body: Any, reason: str
) -> None:
    with pytest.raises(TokenExchangeError) as caught:
        await client(FakeAuth(status, body), key[0]).exchange(
            service_client_id="cds-a", patient="p1", scope="patient/Patient.rs", user_ref="Practitioner/d1"
        )
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({**GOOD, "patient": "p2"}, "token exchange answered for another patient"),
        ({k: v for k, v in GOOD.items() if k != "patient"},
         "token exchange granted patient/ scopes without naming the patient"),
        ({**GOOD, "token_type": "DPoP"}, "token exchange answered without a usable bearer token"),
    ],
)  # fmt: skip
async def test_an_issued_token_the_ehr_will_not_use_is_revoked_at_once(
    key: tuple[SigningKey, Any], body: Any, reason: str
) -> None:
    fake = FakeAuth(200, body)
    with pytest.raises(TokenExchangeError) as caught:
        await client(fake, key[0]).exchange(
            service_client_id="cds-a", patient="p1", scope="patient/Patient.rs", user_ref="Practitioner/d1"
        )
    assert caught.value.reason == reason
    assert [(url, form["token"]) for url, form in fake.forms if url.endswith("/revoke")] == [(f"{AUTH}/revoke", "at-1")]


async def test_without_a_user_no_token_is_asked_for(key: tuple[SigningKey, Any]) -> None:
    fake = FakeAuth()
    with pytest.raises(TokenExchangeError, match="no user"):
        await client(fake, key[0]).exchange(service_client_id="cds-a", patient="p1", scope="x", user_ref=None)
    assert fake.forms == []


async def test_revocation_posts_the_token_authenticated_as_the_ehr(key: tuple[SigningKey, Any]) -> None:
    signing, keyset = key
    fake = FakeAuth()
    await client(fake, signing).revoke("at-1")
    [(url, form)] = fake.forms
    assert url == f"{AUTH}/revoke"
    assert form["token"] == "at-1" and form["token_type_hint"] == "access_token"
    assert verify(form["client_assertion"], keyset, "JWT")["iss"] == "ehr"
    with pytest.raises(TokenExchangeError, match="revocation refused"):
        await client(FakeAuth(401), signing).revoke("at-1")
