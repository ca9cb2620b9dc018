"""ehr.client_jwt: the EHR's CDS Client JWT (CDS Hooks 2.0 "Trusting CDS Clients").

Each token is verified with common.jose.verify_jwt against the EHR's published key, as a careful
CDS Service would: pinned algorithm, typ JWT, iss, aud = the exact URL, exp ≤ 300 s, fresh jti.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from common.clock import FrozenClock
from common.errors import TokenInvalidError
from common.jose import import_public_jwks, unverified_claims, unverified_header, verify_jwt
from common.keys import Alg, SigningKey, new_key_row
from ehr.client_jwt import MAX_LIFETIME_SECONDS, ClientJwtSigner

NOW = 1_800_000_000
ISS = "https://ehr.example.org"
JWKS_URL = f"{ISS}/.well-known/jwks.json"
SERVICE_URL = "https://cds.example.org/cds-services/patient-greeting"
KEK = os.urandom(32)


class StaticKeys:
    def __init__(self, key: SigningKey) -> None:
        self.key = key

    async def signer(self) -> SigningKey:
        return self.key


def make_key(alg: Alg) -> tuple[SigningKey, Any]:
    row, key = new_key_row("ehr", alg, KEK, NOW)
    return key, import_public_jwks({"keys": [json.loads(row.public_jwk)]})


@pytest.fixture(scope="module")
def es384() -> tuple[SigningKey, Any]:
    return make_key("ES384")


def signer_for(key: SigningKey, clock: FrozenClock, **options: Any) -> ClientJwtSigner:
    return ClientJwtSigner(StaticKeys(key), issuer=ISS, jwks_url=JWKS_URL, clock=clock, **options)


def verify(token: str, keyset: Any, clock: FrozenClock, *, audience: str = SERVICE_URL, alg: str = "ES384") -> Any:
    return verify_jwt(
        token,
        keyset,
        algorithms=[alg],
        typ="JWT",
        issuer=ISS,
        audience=audience,
        clock=clock,
        max_lifetime=MAX_LIFETIME_SECONDS,
        allowed_jku=[JWKS_URL],
    )


async def test_the_client_jwt_verifies_against_the_ehr_key_with_the_exact_url_as_audience(
    es384: tuple[SigningKey, Any],
) -> None:
    key, keyset = es384
    clock = FrozenClock(NOW)
    token = await signer_for(key, clock).sign(SERVICE_URL)
    verified = verify(token, keyset, clock)
    assert verified.header == {"alg": "ES384", "kid": key.kid, "typ": "JWT", "jku": JWKS_URL}
    claims = verified.claims
    assert claims["iss"] == ISS
    assert claims["aud"] == SERVICE_URL
    assert claims["iat"] == NOW
    assert claims["exp"] == NOW + 60
    assert "sub" not in claims  # dropped from the spec in 2018
    assert "tenant" not in claims


async def test_a_client_jwt_for_one_url_is_refused_at_another(es384: tuple[SigningKey, Any]) -> None:
    key, keyset = es384
    clock = FrozenClock(NOW)
    token = await signer_for(key, clock).sign(SERVICE_URL)
    with pytest.raises(TokenInvalidError, match="claims"):
        verify(token, keyset, clock, audience="https://cds.example.org/cds-services/other")
    with pytest.raises(TokenInvalidError, match="claims"):
        verify(token, keyset, clock, audience="https://cds.example.org/cds-services")


async def test_every_client_jwt_has_a_fresh_jti(es384: tuple[SigningKey, Any]) -> None:
    key, _ = es384
    signer = signer_for(key, FrozenClock(NOW))
    jtis = {unverified_claims(await signer.sign(SERVICE_URL))["jti"] for _ in range(50)}
    assert len(jtis) == 50
    assert all(len(j) >= 32 for j in jtis)


async def test_the_client_jwt_expires_after_its_configured_lifetime(es384: tuple[SigningKey, Any]) -> None:
    key, keyset = es384
    clock = FrozenClock(NOW)
    token = await signer_for(key, clock, lifetime_seconds=120).sign(SERVICE_URL)
    claims = unverified_claims(token)
    assert claims["exp"] - claims["iat"] == 120
    clock.advance(120 + 31)  # past exp and the verifier's 30 s leeway
    with pytest.raises(TokenInvalidError, match="claims"):
        verify(token, keyset, clock)


@pytest.mark.parametrize("lifetime", [0, -1, MAX_LIFETIME_SECONDS + 1, 86_400])
def test_a_lifetime_beyond_five_minutes_is_refused(es384: tuple[SigningKey, Any], lifetime: int) -> None:
    key, _ = es384
    with pytest.raises(ValueError, match="lifetime"):
        signer_for(key, FrozenClock(NOW), lifetime_seconds=lifetime)


async def test_the_tenant_claim_is_sent_when_configured(es384: tuple[SigningKey, Any]) -> None:
    key, keyset = es384
    clock = FrozenClock(NOW)
    token = await signer_for(key, clock, tenant="clinic-a").sign(SERVICE_URL)
    assert verify(token, keyset, clock).claims["tenant"] == "clinic-a"


async def test_an_rs384_ehr_key_signs_rs384_client_jwts() -> None:
    key, keyset = make_key("RS384")
    clock = FrozenClock(NOW)
    token = await signer_for(key, clock).sign(SERVICE_URL)
    assert unverified_header(token)["alg"] == "RS384"
    assert verify(token, keyset, clock, alg="RS384").claims["aud"] == SERVICE_URL
    with pytest.raises(TokenInvalidError, match="algorithm"):
        verify(token, keyset, clock, alg="ES384")


async def test_a_token_signed_by_another_key_with_the_same_kid_does_not_verify(es384: tuple[SigningKey, Any]) -> None:
    key, keyset = es384
    intruder, _ = make_key("ES384")
    forged_key = SigningKey(kid=key.kid, alg="ES384", key=intruder.key)
    clock = FrozenClock(NOW)
    token = await signer_for(forged_key, clock).sign(SERVICE_URL)
    with pytest.raises(TokenInvalidError, match="signature"):
        verify(token, keyset, clock)


async def test_the_authorization_header_carries_a_bearer_client_jwt(es384: tuple[SigningKey, Any]) -> None:
    key, keyset = es384
    clock = FrozenClock(NOW)
    header = await signer_for(key, clock).authorization(SERVICE_URL)
    scheme, _, token = header["Authorization"].partition(" ")
    assert scheme == "Bearer"
    assert verify(token, keyset, clock).claims["aud"] == SERVICE_URL


def test_an_empty_audience_is_a_programming_error(es384: tuple[SigningKey, Any]) -> None:
    key, _ = es384
    with pytest.raises(ValueError, match="aud"):
        signer_for(key, FrozenClock(NOW)).claims("")
